"""RLCS rollouts: prompts → k responses each from the current policy (force answering included) → rewards.

    RLPrompt (messages without the answer turn, images, ground truth)
      → PromptRenderer: the packing builder's GLM-4.1V chat template up to `<|assistant|>\\n` (same tokens,
        image-token counts and M-RoPE positions as SFT samples)
      → a rollout backend (ROLLOUT_BACKENDS: `transformers` = `generate` with the KV cache; `vllm` for GPU users)
      → Rollout(response ids, trained mask, text, forced)
      → RewardSystem.score_batch (vlmloom.trainer.rewards; a process pool by default, a Ray actor with ray: true)

Force answering: a response whose thinking hits `max_think_tokens` without `</think>` is cut there, gets
`</think><answer>` appended and is continued for at most `force_answer_tokens`, so it can still earn a reward.
The appended tokens were not sampled from the policy, so they are excluded from the policy loss.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from vlmloom.schemas.registry import Registry
from vlmloom.schemas.packed import IGNORE_INDEX

ROLLOUT_BACKENDS: Registry[type] = Registry("rollout backend")


@dataclasses.dataclass(frozen=True)
class RLPrompt:
    """One verifiable prompt: chat turns up to the answer (images as `<image>` placeholders), ground truth."""
    id: str
    domain: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs; the last one is a user turn
    answer: Any  # ground truth as the reward system reads it
    images: tuple[bytes, ...] = ()
    options: tuple[str, ...] | None = None
    meta: dict[str, Any] | None = None


@dataclasses.dataclass
class RenderedPrompt:
    """Prompt tokens in the packing contract: ids [n], rope positions [3, n] (t, h, w), grids [m, 3], images."""
    input_ids: np.ndarray
    rope_position_ids: np.ndarray
    image_grid_thw: np.ndarray
    images: list[bytes]
    image_formats: list[str]


@dataclasses.dataclass
class Rollout:
    response_ids: list[int]
    trained: list[bool]  # per response token: sampled by the policy (False: force-answer tokens we appended)
    text: str = ""  # decoded response (reasoning/box tokens kept)
    forced: bool = False  # force answering was applied
    finished: bool = True  # ended with an end-of-turn token


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------
def prompt_from_sample(sample: Any) -> RLPrompt | None:
    """A curated qa `Sample` with an answer → RLPrompt (messages without the final assistant turn); else None.
    Falls back to `meta` {question, answer, domain, messages} as the demo corpus writes it."""
    meta = sample.meta or {}
    answer = sample.answer if sample.answer is not None else meta.get("answer")
    domain = sample.domain or meta.get("domain")
    if sample.kind != "qa" or answer is None or not domain:
        return None
    turns = [(m.role, m.content) for m in sample.messages] or \
        [(m["role"], m["content"]) for m in meta.get("messages", [])]
    while turns and turns[-1][0] == "assistant":
        turns.pop()
    if not turns and meta.get("question"):
        turns = [("user", "<image>" * len(sample.images) + str(meta["question"]))]
    if not turns:
        return None
    return RLPrompt(id=sample.key, domain=str(domain), messages=tuple(turns), answer=str(answer),
                    images=tuple(im.bytes for im in sample.images), meta={"question": meta.get("question")})


def load_prompts(paths: Sequence[str]) -> list[RLPrompt]:
    """RL prompts from curated directories (qa samples with an answer) or JSONL files with rows
    {id, domain, answer, messages: [{role, content}] | question, images: [paths], options}."""
    prompts: list[RLPrompt] = []
    for path in paths:
        if os.path.isdir(path):
            from vlmloom.packing.curated import iter_curated_samples

            prompts += [p for p in map(prompt_from_sample, iter_curated_samples(path)) if p is not None]
            continue
        base = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in ("id", "domain", "answer") if k not in row]
                if missing or not (row.get("messages") or row.get("question")):
                    raise ValueError(f"{path}:{line_no}: an RL prompt needs id, domain, answer and messages or "
                                     f"question (missing {missing or ['messages']})")
                images = []
                for image in row.get("images", []):
                    with open(image if os.path.isabs(image) else os.path.join(base, image), "rb") as im:
                        images.append(im.read())
                turns = [(m["role"], m["content"]) for m in row.get("messages", [])] or \
                    [("user", "<image>" * len(images) + row["question"])]
                prompts.append(RLPrompt(id=str(row["id"]), domain=row["domain"], messages=tuple(turns),
                                        answer=row["answer"], images=tuple(images),
                                        options=tuple(row["options"]) if row.get("options") else None,
                                        meta={"question": row.get("question")}))
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("RL prompts: duplicate ids (the curriculum tracks pass rates by id)")
    return prompts


class PromptRenderer:
    """RLPrompt → RenderedPrompt with the packing `SequenceBuilder` (identical template to SFT)."""

    def __init__(self, tokenizer: Any, *, system_prompt: str = ""):
        from vlmloom.packing.builder import BuilderConfig, SequenceBuilder

        self.builder = SequenceBuilder(tokenizer, BuilderConfig(system_prompt=system_prompt))

    def render(self, prompt: RLPrompt) -> RenderedPrompt:
        from vlmloom.schemas.records import ImageRef, Message, Rejection, Sample

        images = [ImageRef(bytes=b, format=_image_format(b)) for b in prompt.images]
        # An empty assistant turn renders "<|assistant|>\n" + <|endoftext|>; the prompt is all but that last token.
        sample = Sample(key=prompt.id, source="rlcs", source_id=prompt.id, kind="qa", images=images,
                        messages=[Message(r, c) for r, c in prompt.messages] + [Message("assistant", "")])
        built = self.builder.build(sample)
        if isinstance(built, Rejection):
            raise ValueError(f"RL prompt {prompt.id}: cannot be rendered ({built.reason}: {built.detail})")
        return RenderedPrompt(input_ids=built.input_ids[:-1], rope_position_ids=built.rope_position_ids[:, :-1],
                              image_grid_thw=built.image_grid_thw, images=list(built.images),
                              image_formats=list(built.image_formats))


def _image_format(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return (im.format or "png").lower()


def training_sample(key: str, prompt: RenderedPrompt, rollout: Rollout, *, image_token_id: int,
                    merge_size: int) -> Any:
    """Prompt + response as a packing `BuiltSample`: labels on the policy-sampled response tokens only."""
    from vlmloom.packing.builder import BuiltSample, mrope_position_ids

    response = np.asarray(rollout.response_ids, np.int32)
    ids = np.concatenate([prompt.input_ids, response]).astype(np.int32)
    labels = np.full(ids.shape[0], IGNORE_INDEX, np.int32)
    trained = np.asarray(rollout.trained, bool)
    labels[prompt.input_ids.shape[0]:][trained] = response[trained]
    return BuiltSample(key=key, source="rlcs", kind="qa", input_ids=ids, labels=labels,
                       rope_position_ids=mrope_position_ids(ids, image_token_id, prompt.image_grid_thw, merge_size),
                       image_grid_thw=prompt.image_grid_thw, images=prompt.images, image_formats=prompt.image_formats)


# ------------------------------------------------------------------------------------------------
# force answering (pure)
# ------------------------------------------------------------------------------------------------
def force_answer_cut(response_ids: Sequence[int], *, end_think_id: int, end_ids: Iterable[int],
                     max_think_tokens: int) -> int | None:
    """Where to cut a response whose thinking hit the limit, or None.

    The thinking hit the limit when no `</think>` occurs among the first `max_think_tokens` tokens and the
    response did not end (an end-of-turn token) before them. Returns `max_think_tokens` (keep that many tokens,
    then append `</think><answer>`)."""
    head = list(response_ids[:max_think_tokens])
    if end_think_id in head or len(head) < max_think_tokens:
        return None
    if any(t in set(end_ids) for t in head):
        return None
    return max_think_tokens


def split_at_end(ids: Sequence[int], end_ids: set[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first end-of-turn token; (tokens, finished)."""
    for i, t in enumerate(ids):
        if t in end_ids:
            return list(ids[: i + 1]), True
    return list(ids), False


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    max_think_tokens: int
    force_answer_tokens: int
    temperature: float
    top_p: float
    generation_batch: int = 16


@ROLLOUT_BACKENDS.register("transformers")
class TransformersRollout:
    """k samples per prompt with `model.generate` (KV cache on, top-k off, top-p and temperature from the config);
    prompts of equal length share one call, so no padding enters the cache or the M-RoPE positions."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, settings: GenerationSettings):
        from vlmloom.packing import tokenizer as T

        self.model, self.tokenizer, self.image_processor, self.settings = model, tokenizer, image_processor, settings
        ids = T.special_token_ids(tokenizer)
        self.end_ids = {ids[t] for t in (T.ENDOFTEXT, T.USER, T.OBSERVATION) if t in ids}
        self.pad_id = ids[T.ENDOFTEXT]
        self.end_think_id, self.answer_id = ids[T.END_THINK], ids[T.ANSWER]
        self.image_token_id = ids[T.IMAGE]
        # A response must never contain image/video placeholders (they would need pixels); a young policy can
        # sample them, so generation suppresses them (the renormalisation over the rest is negligible).
        self.suppressed = sorted(ids[t] for t in (T.IMAGE, T.BEGIN_OF_IMAGE, T.END_OF_IMAGE, T.VIDEO, T.BEGIN_OF_VIDEO,
                                                  T.END_OF_VIDEO, T.GMASK, T.SOP) if t in ids)

    @torch.no_grad()
    def generate(self, prompts: Sequence[RenderedPrompt], k: int) -> list[list[Rollout]]:
        was_training = self.model.training
        self.model.eval()
        try:
            out: list[list[Rollout] | None] = [None] * len(prompts)
            by_length: dict[int, list[int]] = {}
            for i, p in enumerate(prompts):
                by_length.setdefault(len(p.input_ids), []).append(i)
            for indices in by_length.values():
                for start in range(0, len(indices), self.settings.generation_batch):
                    chunk = indices[start:start + self.settings.generation_batch]
                    rows = [prompts[i] for i in chunk]
                    responses = self._sample([p.input_ids for p in rows], rows, k, self.settings.max_new_tokens)
                    for j, i in enumerate(chunk):
                        out[i] = self._finish(prompts[i], responses[j * k:(j + 1) * k])
            return [o for o in out if o is not None]
        finally:
            self.model.train(was_training)

    def _finish(self, prompt: RenderedPrompt, responses: list[list[int]]) -> list[Rollout]:
        s = self.settings
        rollouts, forced_rows = [], []
        for ids in responses:
            cut = force_answer_cut(ids, end_think_id=self.end_think_id, end_ids=self.end_ids,
                                   max_think_tokens=s.max_think_tokens)
            if cut is None:
                tokens, finished = split_at_end(ids, self.end_ids)
                rollouts.append(Rollout(tokens, [True] * len(tokens), finished=finished))
            else:
                head = list(ids[:cut])
                rollouts.append(Rollout(head + [self.end_think_id, self.answer_id],
                                        [True] * len(head) + [False, False], forced=True))
                forced_rows.append(len(rollouts) - 1)
        if forced_rows:
            contexts = [np.concatenate([prompt.input_ids, np.asarray(rollouts[r].response_ids, np.int32)])
                        for r in forced_rows]
            tails = self._sample(contexts, [prompt] * len(contexts), 1, s.force_answer_tokens)
            for r, tail in zip(forced_rows, tails):
                tokens, finished = split_at_end(tail, self.end_ids)
                rollouts[r].response_ids += tokens
                rollouts[r].trained += [True] * len(tokens)
                rollouts[r].finished = finished
        for r in rollouts:
            r.text = self.tokenizer.decode(r.response_ids, skip_special_tokens=True)
        return rollouts

    def _sample(self, contexts: list[np.ndarray], prompts: list[RenderedPrompt], k: int,
                max_new_tokens: int) -> list[list[int]]:
        """contexts (all one length) → len(contexts)·k sampled continuations, context-major."""
        device = next(self.model.parameters()).device
        input_ids = torch.as_tensor(np.stack(contexts), dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {}
        images = [b for p in prompts for b in p.images]
        if images:
            from PIL import Image

            pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
            processed = self.image_processor(images=pil, return_tensors="pt")
            kwargs["pixel_values"] = processed["pixel_values"].to(device, dtype=self.model.dtype)
            kwargs["image_grid_thw"] = processed["image_grid_thw"].to(device)
        out = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=(input_ids == self.image_token_id).long(), do_sample=True,
            temperature=self.settings.temperature, top_p=self.settings.top_p, top_k=0,
            max_new_tokens=max_new_tokens, num_return_sequences=k, use_cache=True, suppress_tokens=self.suppressed,
            pad_token_id=self.pad_id, eos_token_id=sorted(self.end_ids), **kwargs)
        return out[:, input_ids.shape[1]:].tolist()


@ROLLOUT_BACKENDS.register("vllm")
class VLLMRollout:
    """vLLM engine for GPU users: same interface as TransformersRollout. Weights are pushed from the trained
    model with `sync_weights` after every optimizer step. Needs `pip install vllm` (not part of the CPU install)."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, settings: GenerationSettings,
                 *, model_dir: str = ""):
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("rlcs.rollout_backend: vllm is not installed (pip install vllm on a CUDA machine), "
                               "or use rollout_backend: transformers") from exc
        from vllm import LLM

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.helper = TransformersRollout(model, tokenizer, image_processor, settings)  # ids, force answering
        self.llm = LLM(model=model_dir or model.name_or_path, skip_tokenizer_init=True, enforce_eager=True)

    def sync_weights(self) -> None:
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights(((n, p.detach()) for n, p in self.model.named_parameters()))

    def generate(self, prompts: Sequence[RenderedPrompt], k: int) -> list[list[Rollout]]:
        from PIL import Image
        from vllm import SamplingParams

        self.sync_weights()
        s = self.settings
        params = SamplingParams(n=k, temperature=s.temperature, top_p=s.top_p, top_k=-1, max_tokens=s.max_new_tokens,
                                stop_token_ids=sorted(self.helper.end_ids))
        requests = [{"prompt_token_ids": p.input_ids.tolist(),
                     "multi_modal_data": {"image": [Image.open(io.BytesIO(b)).convert("RGB") for b in p.images]}}
                    if p.images else {"prompt_token_ids": p.input_ids.tolist()} for p in prompts]
        outputs = self.llm.generate(requests, params)
        # force-answer continuations run through transformers: they are few and short
        return [self.helper._finish(p, [list(c.token_ids) for c in o.outputs]) for p, o in zip(prompts, outputs)]


def make_rollout_backend(name: str, model: Any, tokenizer: Any, image_processor: Any,
                         settings: GenerationSettings) -> Any:
    return ROLLOUT_BACKENDS.get(name)(model, tokenizer, image_processor, settings)


# ------------------------------------------------------------------------------------------------
# rewards
# ------------------------------------------------------------------------------------------------
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
    """Rollouts in a Ray actor (`ray: true`) holding its own copy of the policy: weights are sent before every
    generation (a CPU state dict through the object store), prompts and sampled tokens come back. The actor's
    torch RNG is seeded per call from the trainer's RNG, so runs stay reproducible and resumable."""

    def __init__(self, model: Any, tokenizer_dir: str, settings: GenerationSettings, *, num_cpus: int):
        ray = ensure_ray(num_cpus)
        self.ray, self.model = ray, model
        self.actor = ray.remote(num_cpus=1)(_RolloutActor).remote(model.config, tokenizer_dir, settings)

    def generate(self, prompts: Sequence[RenderedPrompt], k: int) -> list[list[Rollout]]:
        weights = self.ray.put({n: t.detach().cpu() for n, t in self.model.state_dict().items()})
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return self.ray.get(self.actor.generate.remote(weights, list(prompts), k, seed))

    def close(self) -> None:
        self.ray.kill(self.actor)


class _RolloutActor:
    def __init__(self, model_config: Any, tokenizer_dir: str, settings: GenerationSettings):
        from transformers import AutoTokenizer, Glm4vForConditionalGeneration

        from vlmloom.trainer.data import load_image_processor

        torch.set_num_threads(1)
        self.model = Glm4vForConditionalGeneration._from_config(model_config)
        self.backend = TransformersRollout(self.model, AutoTokenizer.from_pretrained(tokenizer_dir),
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
