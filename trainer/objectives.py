"""Training objectives: what one optimizer step's micro-batches are, and the module that turns one into a loss.

The loop (loop.py) is the same for every mode; it asks its objective for
    wrapper                      the nn.Module DeepSpeed wraps: forward(**inputs(batch)) → (loss sum, tokens)
    next_step() → [batch] | None  the micro-batches of the next optimizer step (None: data exhausted)
    denominator(batch)           this batch's share of the step's normaliser (Σ over the step, all ranks)
    inputs(batch, device)        the forward keyword arguments
    step_metrics()               extra metrics of the step just taken
    state_dict() / load_state_dict(state)   exact resume
    tokenizer_dir, close()

pretrain / sft: `SupervisedObjective` (packed shards through the stateful loader; token-level loss normalised by
the step's label tokens). rlcs: `vlmloom.trainer.rlcs.RLCSObjective` (rollouts, rewards, GRPO, curriculum).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from vlmloom.schemas import packed
from vlmloom.trainer.config import TrainConfig
from vlmloom.trainer.data import PackedCollator, make_loader, packed_source
from vlmloom.trainer.loss import CausalLMLoss, model_inputs


class SupervisedObjective:
    """Pre-training / SFT: next-token loss on packed shards (or any record iterable passed as `source`)."""

    def __init__(self, config: TrainConfig, model: Any, image_processor: Any, *, source: Iterable[dict] | None,
                 rank: int, world_size: int):
        self.grad_accum = config.grad_accum
        self.wrapper = CausalLMLoss(model)
        collator = PackedCollator(model.config, image_processor=image_processor,
                                  derive_labels=config.mode == "pretrain")
        if source is None:
            source = packed_source(config.data, shuffle_buffer=config.shuffle_buffer, seed=config.seed, rank=rank,
                                   world_size=world_size, epochs=config.epochs)
        self.loader = make_loader(source, collator, micro_batch=config.micro_batch, num_workers=config.num_workers)
        self._batches = None
        self.tokenizer_dir = next((packed.tokenizer_dir(d) for d in config.data
                                   if os.path.isdir(packed.tokenizer_dir(d))), None)

    def next_step(self) -> list[dict[str, Any]] | None:
        if self._batches is None:
            self._batches = iter(self.loader)
        out = []
        for _ in range(self.grad_accum):
            try:
                out.append(next(self._batches))
            except StopIteration:
                return None
        return out

    @staticmethod
    def denominator(batch: dict[str, Any]) -> float:
        return batch["stats"]["label_tokens"]  # Σ token losses / Σ label tokens of the step, not a mean of means

    @staticmethod
    def inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return model_inputs(batch, device)

    def step_metrics(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> Any:
        return self.loader.state_dict()

    def load_state_dict(self, state: Any) -> None:
        if state is not None:
            self.loader.load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def build_objective(config: TrainConfig, model: Any, image_processor: Any, *, source: Iterable[Any] | None,
                    rank: int, world_size: int, device: torch.device) -> Any:
    """The objective of `config.mode`. For rlcs, `source` may be a list of `rollout.RLPrompt` (tests, demos)."""
    if config.mode == "rlcs":
        from vlmloom.trainer.rlcs import RLCSObjective

        return RLCSObjective(config, model, image_processor, prompts=source, rank=rank, world_size=world_size,
                             device=device)
    return SupervisedObjective(config, model, image_processor, source=source, rank=rank, world_size=world_size)
