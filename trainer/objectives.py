"""Training objectives: what one optimizer step's micro-batches are, and the module that turns one into a loss.

The loop (loop.py) is the same for every mode; it talks to its objective only through `Objective` below
(a typed Protocol): wrapper, next_step, denominator, inputs, null_batch, step_metrics, state_dict /
load_state_dict, summary, tokenizer_dir, close. Batches are the objective's own dicts; the loop reads only their
`stats` (the collator's token counts).

pretrain / sft: `SupervisedObjective` (packed shards through the stateful loader; token-level loss normalised by
the step's label tokens). rlcs: `vlmloom.trainer.rlcs.RLCSObjective` (rollouts, rewards, GRPO, curriculum).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Protocol

import torch

from vlmloom.schemas import packed
from vlmloom.trainer.config import TrainConfig
from vlmloom.trainer.data import PackedCollator, make_loader, packed_source
from vlmloom.trainer.loss import CausalLMLoss, model_inputs


Batch = dict[str, Any]  # a collated micro-batch (PackedCollator's keys, plus the objective's own)


class Objective(Protocol):
    """What the training loop asks of an objective."""

    wrapper: torch.nn.Module  # what DeepSpeed wraps: forward(**inputs(batch)) → (loss sum, tokens)
    tokenizer_dir: str | None  # copied into the exported model directory

    def next_step(self) -> list[Batch] | None:
        """The micro-batches of the next optimizer step ([] = a step without update); None: data exhausted."""

    def denominator(self, batch: Batch) -> float:
        """This batch's share of the step's normaliser (summed over the step and all ranks)."""

    def inputs(self, batch: Batch, device: torch.device) -> dict[str, Any]:
        """The forward keyword arguments of `wrapper`."""

    def null_batch(self, batch: Batch) -> Batch:
        """A copy of `batch` that contributes zero loss (a rank with fewer micro-batches repeats one)."""

    def step_metrics(self) -> dict[str, Any]:
        """Extra metrics of the step just taken."""

    def state_dict(self) -> Any:
        """Everything exact resume needs (stored with the checkpoint)."""

    def load_state_dict(self, state: Any) -> None: ...

    def summary(self) -> dict[str, Any]:
        """Added to the run's summary."""

    def close(self) -> None: ...


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

    @staticmethod
    def null_batch(batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, "targets": batch["targets"].clone().fill_(-100)}  # no label token: zero loss

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
                    rank: int, world_size: int, device: torch.device) -> Objective:
    """The objective of `config.mode`. For rlcs, `source` may be a list of `rollout.RLPrompt` (tests, demos)."""
    if config.mode == "rlcs":
        from vlmloom.trainer.rlcs import RLCSObjective

        return RLCSObjective(config, model, image_processor, prompts=source, rank=rank, world_size=world_size,
                             device=device)
    return SupervisedObjective(config, model, image_processor, source=source, rank=rank, world_size=world_size)
