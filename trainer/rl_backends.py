"""Generation backends: rendered prompts → k rollouts each from the current policy, force answering included.

    ROLLOUT_BACKENDS (rlcs.rollout_backend)
      transformers   `model.generate` in this process, KV cache on (CPU and GPU)
      vllm           a vLLM engine (GPU users; `pip install vllm`) through its public API only: `LLM.generate`
                     with `SamplingParams`, weights pushed with `LLM.collective_rpc` into a worker extension
    Every backend samples token ids (`_sample`); the shared `RolloutBackend.finish` applies force answering and
    decodes. `rlcs.ray: true` runs the named backend inside a Ray actor (trainer/rl_remote.py), by this registry.

Force answering: a response whose thinking hits `max_think_tokens` without `</think>` is cut there, gets
`</think><answer>` appended and is continued for at most `force_answer_tokens`, so it can still earn a reward.
The appended tokens were not sampled from the policy, so they are excluded from the policy loss.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from vlmloom.schemas.registry import Registry
from vlmloom.trainer.rl_prompts import RenderedPrompt

ROLLOUT_BACKENDS: Registry[type] = Registry("rollout backend")


@dataclasses.dataclass
class Rollout:
    response_ids: list[int]
    trained: list[bool]  # per response token: sampled by the policy (False: force-answer tokens we appended)
    text: str = ""  # decoded response (reasoning/box tokens kept)
    forced: bool = False  # force answering was applied
    finished: bool = True  # ended with an end-of-turn token


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


class RolloutBackend:
    """What every backend shares: the special-token ids, force answering and decoding (`finish`). A backend
    implements `generate(prompts, k)` and `_sample(contexts, prompts, k, max_new_tokens)`."""

    def __init__(self, tokenizer: Any, settings: GenerationSettings):
        from vlmloom.packing import tokenizer as T

        self.tokenizer, self.settings = tokenizer, settings
        ids = T.special_token_ids(tokenizer)
        self.end_ids = {ids[t] for t in (T.ENDOFTEXT, T.USER, T.OBSERVATION) if t in ids}
        self.pad_id = ids[T.ENDOFTEXT]
        self.end_think_id, self.answer_id = ids[T.END_THINK], ids[T.ANSWER]
        self.image_token_id = ids[T.IMAGE]
        # A response must never contain image/video placeholders (they would need pixels); a young policy can
        # sample them, so generation suppresses them (the renormalisation over the rest is negligible).
        self.suppressed = sorted(ids[t] for t in (T.IMAGE, T.BEGIN_OF_IMAGE, T.END_OF_IMAGE, T.VIDEO, T.BEGIN_OF_VIDEO,
                                                  T.END_OF_VIDEO, T.GMASK, T.SOP) if t in ids)

    def generate(self, prompts: Sequence[RenderedPrompt], k: int) -> list[list[Rollout]]:
        raise NotImplementedError

    def _sample(self, contexts: list[np.ndarray], prompts: list[RenderedPrompt], k: int,
                max_new_tokens: int) -> list[list[int]]:
        """contexts → len(contexts)·k sampled continuations (token ids), context-major."""
        raise NotImplementedError

    def finish(self, prompt: RenderedPrompt, responses: list[list[int]]) -> list[Rollout]:
        """Sampled responses of one prompt → Rollouts: force answering (continued with this backend), decoding."""
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


@ROLLOUT_BACKENDS.register("transformers")
class TransformersRollout(RolloutBackend):
    """k samples per prompt with `model.generate` (KV cache on, top-k off, top-p and temperature from the config);
    prompts of equal length share one call, so no padding enters the cache or the M-RoPE positions."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, settings: GenerationSettings):
        super().__init__(tokenizer, settings)
        self.model, self.image_processor = model, image_processor

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
                        out[i] = self.finish(prompts[i], responses[j * k:(j + 1) * k])
            return [o for o in out if o is not None]
        finally:
            self.model.train(was_training)

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
class VLLMRollout(RolloutBackend):
    """A vLLM engine (GPU users; `pip install vllm`, not part of the CPU install), public API only:
    `LLM.generate(prompts, SamplingParams)` with token-id prompts (`{"prompt_token_ids", "multi_modal_data"}`),
    reading `RequestOutput.outputs[i].token_ids`. Before every generation the trained model's weights are pushed
    with `LLM.collective_rpc` into `VLLMWeightLoader` (the engine's `worker_extension_cls`, vLLM's extension point
    for RL weight updates) and the prefix cache is reset (`LLM.reset_prefix_cache`), since cached prefixes were
    computed with the old weights. Force-answer continuations run on the same engine. `llm`: an engine to use
    instead of building one (tests pass a fake with the same interface)."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, settings: GenerationSettings,
                 *, model_dir: str = "", llm: Any = None):
        super().__init__(tokenizer, settings)
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("rlcs.rollout_backend: vllm is not installed (pip install vllm on a CUDA machine), "
                               "or use rollout_backend: transformers") from exc
        self.model = model
        if llm is None:
            from vllm import LLM

            # the tokenizer is ours (prompts arrive as token ids, responses are decoded here)
            llm = LLM(model=model_dir or model.name_or_path, skip_tokenizer_init=True, enforce_eager=True,
                      worker_extension_cls=f"{__name__}.VLLMWeightLoader")
        self.llm = llm

    def sync_weights(self) -> None:
        # CPU tensors: the engine's workers may live in other processes (collective_rpc pickles its arguments)
        weights = [(n, p.detach().cpu()) for n, p in self.model.named_parameters()]
        self.llm.collective_rpc("vlmloom_load_weights", args=(weights,))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[RenderedPrompt], k: int) -> list[list[Rollout]]:
        self.sync_weights()
        responses = self._sample([p.input_ids for p in prompts], list(prompts), k, self.settings.max_new_tokens)
        return [self.finish(p, responses[i * k:(i + 1) * k]) for i, p in enumerate(prompts)]

    def _sample(self, contexts: list[np.ndarray], prompts: list[RenderedPrompt], k: int,
                max_new_tokens: int) -> list[list[int]]:
        from PIL import Image
        from vllm import SamplingParams

        s = self.settings
        params = SamplingParams(n=k, temperature=s.temperature, top_p=s.top_p, top_k=-1, max_tokens=max_new_tokens,
                                stop_token_ids=sorted(self.end_ids))
        requests = []
        for context, p in zip(contexts, prompts):
            request: dict[str, Any] = {"prompt_token_ids": [int(t) for t in context]}
            if p.images:
                request["multi_modal_data"] = {"image": [Image.open(io.BytesIO(b)).convert("RGB") for b in p.images]}
            requests.append(request)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(c.token_ids) for o in outputs for c in o.outputs]


class VLLMWeightLoader:
    """vLLM worker extension (`LLM(worker_extension_cls=…)`): its methods are callable on every worker through
    `LLM.collective_rpc(name, args)`; `self.model_runner` is the worker's, as in vLLM's RLHF examples."""

    def vlmloom_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        self.model_runner.model.load_weights(weights=weights)  # type: ignore[attr-defined]


def make_rollout_backend(name: str, model: Any, tokenizer: Any, image_processor: Any,
                         settings: GenerationSettings) -> Any:
    """The backend `name` of ROLLOUT_BACKENDS in this process (trainer/rl_remote.py puts one in a Ray actor)."""
    return ROLLOUT_BACKENDS.get(name)(model, tokenizer, image_processor, settings)
