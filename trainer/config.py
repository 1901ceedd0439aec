"""Typed configuration of a `vlmloom train` job: YAML mapping → frozen `TrainConfig`.

Build it with `vlmloom.schemas.config.build_config(TrainConfig, data)`; every key can be overridden on the
command line as `key=value` (e.g. `zero_stage=2 steps=100`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from vlmloom.schemas.config import ConfigError

ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "vlmloom_varlen")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training job: model, data, optimisation, DeepSpeed, checkpoints, metrics."""

    # pretrain: records without labels learn every text token; sft: records must carry the packer's labels
    # (assistant spans). Both use the token-level loss; RLCS will add "rlcs" through the same loop.
    mode: Literal["pretrain", "sft"] = "pretrain"
    # model: a Hugging Face checkpoint directory (str), or a mapping of tiny-model sizes for tests/demos
    # (keys of `vlmloom.trainer.model.tiny_glm4v_config`, e.g. {hidden_size: 64}); "tiny" or a mapping without
    # vocab_size takes vocabulary and special-token ids from DATA/tokenizer.
    model: str | dict[str, Any] = ""
    data: list[str] = dataclasses.field(default_factory=list)  # packed directories or shard paths
    output: str = "train_out"  # run directory: checkpoints/, metrics.jsonl, tensorboard/, hf_model/
    seed: int = 0

    # optimisation
    steps: int = 10  # optimizer steps of the whole run (the lr schedule spans them)
    stop_after: int = 0  # end this invocation at this global step (checkpointed) and resume later; 0 = at `steps`
    micro_batch: int = 1  # packed sequences per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio; 1 keeps lr constant
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0 disables

    # model options
    freeze_vision: bool = False  # vision tower (patch embed + blocks), not the merger
    freeze_projector: bool = False  # downsample + patch merger that maps vision features into the LLM
    freeze_llm: bool = False  # language model + lm_head
    gradient_checkpointing: bool = False
    # auto: flash_attention_2 if installed on CUDA, else vlmloom_varlen on CUDA (torch varlen_attn), else sdpa
    attn_implementation: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU

    # DeepSpeed
    zero_stage: int = 0  # 0-3
    dist_backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU

    # data
    shuffle_buffer: int = 0  # packed sequences held for shuffling; 0 keeps file order
    epochs: int = 0  # passes over the data; 0 repeats until `steps` are done
    num_workers: int = 0  # data-loader worker processes
    image_processor: str = ""  # directory with a preprocessor_config.json; "" uses Glm4vImageProcessorPil defaults

    # checkpoints
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 saves only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 keeps all
    resume: str = "auto"  # auto: newest checkpoint under output/checkpoints if any; never; or a checkpoint dir
    export: bool = True  # write a plain Hugging Face directory to output/hf_model at the end

    # metrics
    log_every: int = 1  # optimizer steps between metric records
    tensorboard: bool = True
    progress: bool = True  # tqdm progress bar on the console
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 looks the device up in a table (CPU: no MFU)

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: set a checkpoint directory, or a mapping of tiny sizes such as {vocab_size: 512}")
        if not 0 <= self.zero_stage <= 3:
            raise ConfigError(f"zero_stage ({self.zero_stage}) must be 0, 1, 2 or 3")
        for name in ("steps", "micro_batch", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(f"attn_implementation {self.attn_implementation!r}: "
                              f"use one of {list(ATTN_IMPLEMENTATIONS)}")
        if self.freeze_vision and self.freeze_projector and self.freeze_llm:
            raise ConfigError("freeze_vision, freeze_projector and freeze_llm are all true: nothing would train")
        if len(self.betas) != 2:
            raise ConfigError(f"betas {self.betas}: give two numbers, e.g. [0.9, 0.95]")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio ({self.min_lr_ratio}) must be within [0, 1]")
        if self.stop_after < 0:
            raise ConfigError(f"stop_after ({self.stop_after}) must be >= 0 (0 runs to `steps`)")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0 or self.epochs < 0:
            raise ConfigError("checkpoint_every, keep_checkpoints and epochs must be >= 0")
