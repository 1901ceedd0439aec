"""Where rollouts and rewards run: in this process, or in Ray actors (`rlcs.ray: true`).

    rewards   reward_items (RLPrompt + Rollout → RewardItem) → LocalRewards (the reward system in this process,
              its own process pool doing the work) | RayRewards (the same inside an actor)
    rollouts  RayRollout: an actor holding its own copy of the policy that builds its generation backend by name
              from ROLLOUT_BACKENDS (trainer/rl_backends.py), as the in-process path does
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from vlmloom.trainer.rl_backends import GenerationSettings, Rollout, make_rollout_backend
from vlmloom.trainer.rl_prompts import RenderedPrompt, RLPrompt


def reward_items(prompts: Sequence[RLPrompt], groups: Sequence[Sequence[Rollout]]) -> list[Any]:
    """One RewardItem per rollout, prompt-major; ids are `{prompt id}#{response index}`."""
    from vlmloom.trainer.rewards import RewardItem

    return [RewardItem(id=f"{p.id}#{j}", domain=p.domain, response=r.text, answer=p.answer,
                       options=list(p.options) if p.options else None, meta=p.meta)
            for p, group in zip(prompts, groups) for j, r in enumerate(group)]


class LocalRewards:
    """The reward system in this process (its own process pool does the work): items → results. `source`: a
    rewards YAML path or mapping (`rlcs.rewards`), or a RewardConfig."""

    def __init__(self, source: Any):
        from vlmloom.trainer.rewards import RewardConfig, RewardSystem, load_reward_config

        self.system = RewardSystem(source if isinstance(source, RewardConfig) else load_reward_config(source or None))

    def score(self, items: list[Any]) -> list[Any]:
        return self.system.score_batch(items)

    def stats(self) -> dict[str, Any]:
        return self.system.stats()

    def close(self) -> None:
        self.system.close()


class RayRewards:
    """The reward system inside a Ray actor (`ray: true`): the trainer process only ships items and results."""

    def __init__(self, config: Any, *, num_cpus: int):
        ray = ensure_ray(num_cpus)
        self.actor = ray.remote(num_cpus=1)(_RewardActor).remote(config)
        self.ray = ray

    def score(self, items: list[Any]) -> list[Any]:
        return self.ray.get(self.actor.score.remote(items))

    def stats(self) -> dict[str, Any]:
        return self.ray.get(self.actor.stats.remote())

    def close(self) -> None:
        self.ray.get(self.actor.close.remote())
        self.ray.kill(self.actor)


class _RewardActor:
    def __init__(self, config: Any):
        self.local = LocalRewards(config)

    def score(self, items: list[Any]) -> list[Any]:
        return self.local.score(items)

    def stats(self) -> dict[str, Any]:
        return self.local.stats()

    def close(self) -> None:
        self.local.close()


class RayRollout:
    """Rollouts in a Ray actor (`ray: true`) holding its own copy of the policy and the generation backend named
    `backend` (ROLLOUT_BACKENDS): weights are sent before every generation (a CPU state dict through the object
    store), prompts and sampled tokens come back. The actor's torch RNG is seeded per call from the trainer's
    RNG, so runs stay reproducible and resumable."""

    def __init__(self, model: Any, tokenizer_dir: str, settings: GenerationSettings, *, num_cpus: int,
                 backend: str = "transformers"):
        from vlmloom.trainer.rl_backends import ROLLOUT_BACKENDS

        ROLLOUT_BACKENDS.get(backend)  # an unknown name fails here, not inside the actor
        ray = ensure_ray(num_cpus)
        self.ray, self.model = ray, model
        self.actor = ray.remote(num_cpus=1)(_RolloutActor).remote(model.config, tokenizer_dir, settings, backend)

    def generate(self, prompts: Sequence[RenderedPrompt], k: int) -> list[list[Rollout]]:
        weights = self.ray.put({n: t.detach().cpu() for n, t in self.model.state_dict().items()})
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return self.ray.get(self.actor.generate.remote(weights, list(prompts), k, seed))

    def close(self) -> None:
        self.ray.kill(self.actor)


class _RolloutActor:
    def __init__(self, model_config: Any, tokenizer_dir: str, settings: GenerationSettings, backend: str):
        from transformers import AutoTokenizer, Glm4vForConditionalGeneration

        from vlmloom.trainer.data import load_image_processor

        torch.set_num_threads(1)
        self.model = Glm4vForConditionalGeneration._from_config(model_config)
        self.backend = make_rollout_backend(backend, self.model, AutoTokenizer.from_pretrained(tokenizer_dir),
                                            load_image_processor(""), settings)

    def generate(self, weights: dict[str, torch.Tensor], prompts: list[RenderedPrompt], k: int,
                 seed: int) -> list[list[Rollout]]:
        self.model.load_state_dict(weights)
        torch.manual_seed(seed)
        return self.backend.generate(prompts, k)


def ensure_ray(num_cpus: int) -> Any:
    """`import ray` and start a local instance unless one runs (or a cluster address is configured)."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("rlcs.ray: true needs Ray: pip install 'vlmloom[rl]' (or set ray: false)") from exc
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray
