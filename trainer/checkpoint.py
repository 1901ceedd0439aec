"""Checkpoints that resume exactly, and export to a plain Hugging Face directory.

A checkpoint `output/checkpoints/step_000123/` holds DeepSpeed's model / optimizer / scheduler states (written
by `engine.save_checkpoint`) plus one `trainer_state_rank{r}.pt` per rank: step counter, RNG states (python,
numpy, torch, CUDA) and the data loader's state. `output/checkpoints/latest` names the newest tag.
"""
from __future__ import annotations

import os
import random
import shutil
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tag_for(step: int) -> str:
    return f"step_{step:09d}"


def find_resume(checkpoints_dir: str, resume: str) -> tuple[str, str] | None:
    """(checkpoints dir, tag) to resume from, per `TrainConfig.resume` (auto | never | a checkpoint dir)."""
    if resume == "never":
        return None
    if resume != "auto":
        path = os.path.abspath(resume.rstrip("/"))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"resume: {resume} is not a checkpoint directory")
        return os.path.dirname(path), os.path.basename(path)
    latest = os.path.join(checkpoints_dir, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest, encoding="utf-8") as fh:
        return checkpoints_dir, fh.read().strip()


def save(engine: Any, checkpoints_dir: str, step: int, *, loader_state: Any, rank: int, keep: int,
         extra: dict[str, Any] | None = None) -> str:
    """Save a checkpoint for `step` on every rank; prune older ones on rank 0 (`keep` = 0 keeps all)."""
    import torch.distributed as dist

    tag = tag_for(step)
    engine.save_checkpoint(checkpoints_dir, tag=tag)  # collective; writes `latest` on rank 0
    state = {"step": step, "rng": rng_state(), "loader": loader_state, **(extra or {})}
    tmp = os.path.join(checkpoints_dir, tag, f".trainer_state_rank{rank}.pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(checkpoints_dir, tag, f"trainer_state_rank{rank}.pt"))
    if dist.is_initialized():
        dist.barrier()
    if rank == 0 and keep > 0:
        tags = sorted(t for t in os.listdir(checkpoints_dir) if t.startswith("step_"))
        for old in tags[:-keep]:
            shutil.rmtree(os.path.join(checkpoints_dir, old), ignore_errors=True)
    return os.path.join(checkpoints_dir, tag)


def load(engine: Any, checkpoints_dir: str, tag: str, *, rank: int) -> dict[str, Any]:
    """Load model/optimizer/scheduler into `engine`, restore RNG; returns the rank's trainer state."""
    path, _ = engine.load_checkpoint(checkpoints_dir, tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} in {checkpoints_dir}")
    state_path = os.path.join(checkpoints_dir, tag, f"trainer_state_rank{rank}.pt")
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"{state_path} is missing: was the checkpoint written with a different world size?")
    state = torch.load(state_path, weights_only=False)
    set_rng_state(state["rng"])
    return state


def export_hf(engine: Any, model: Any, out_dir: str, *, zero_stage: int, rank: int,
              tokenizer_dir: str | None = None, image_processor: Any = None) -> str | None:
    """Write `model` as a plain Hugging Face directory (config + safetensors [+ tokenizer, image processor]).

    Under ZeRO-3 the shards are gathered first (a collective: every rank calls this).
    """
    state_dict = None
    if zero_stage == 3:
        full = engine._zero3_consolidated_16bit_state_dict()  # keys of the CausalLMLoss wrapper: "model.…"
        if rank == 0:
            state_dict = {k.removeprefix("model."): v for k, v in full.items()}
    if rank != 0:
        return None
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, state_dict=state_dict)
    if tokenizer_dir and os.path.isdir(tokenizer_dir):
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    if image_processor is not None:
        image_processor.save_pretrained(out_dir)
    return out_dir
