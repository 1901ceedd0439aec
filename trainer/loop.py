"""The training loop: config → model → DeepSpeed engine → data → steps → checkpoints → metrics → export.

`train(config)` runs one job and returns a summary dict: `setup` (process group, model, objective, engine,
resume) → `train_step` until the steps are done or the data runs out (checkpoints on the way) → `finish` (last
checkpoint, export, summary). Pre-training, SFT and RLCS are objectives (objectives.py `Objective`, rlcs.py)
plugged into the same loop: an objective says what a step's micro-batches are and which module turns one into a
loss; the loop normalises over the whole step, steps, logs and checkpoints, and reads no objective's batch keys
beyond the collator's `stats`.
Only this package imports deepspeed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import socket
import time
from typing import Any, Iterable

import numpy as np
import torch

from vlmloom.trainer import checkpoint as ckpt
from vlmloom.trainer.config import TrainConfig
from vlmloom.trainer.data import load_image_processor
from vlmloom.trainer.loss import step_loss_scale
from vlmloom.trainer.objectives import Objective, build_objective
from vlmloom.trainer.metrics import MetricsLogger, peak_tflops, step_flops, sum_stats
from vlmloom.trainer.model import (describe, freeze_parts, load_model, resolve_attn_implementation,
                                   resolve_model_spec)

EMPTY_STATS = ("tokens", "label_tokens", "capacity", "samples", "sum_sq_len", "patches")  # an RLCS step may have none


def train(config: TrainConfig, *, source: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the job described by `config`; `source` replaces the packed-shard reader (any iterable of records;
    resume is exact when it has state_dict/load_state_dict), or for `mode: rlcs` the prompt list (RLPrompt).
    Returns a summary (losses, throughput, paths; RLCS adds per-iteration metrics)."""
    run = setup(config, source)
    end = min(config.steps, config.stop_after) if config.stop_after else config.steps
    run.engine.train()
    while run.step < end:
        if not train_step(run):
            run.stop_reason = "data_exhausted"
            break
        if config.checkpoint_every and run.step % config.checkpoint_every == 0:
            save_checkpoint(run)
    run.progress.close()
    if run.stop_reason == "steps_done" and run.step < config.steps:
        run.stop_reason = "stop_after"
    return finish(run)


@dataclasses.dataclass
class Run:
    """One job between `setup` and `finish`: what was built, and the counters the steps advance."""
    config: TrainConfig
    device: torch.device
    rank: int
    world_size: int
    precision: str
    attn: str
    model: Any
    image_processor: Any
    objective: Objective
    engine: Any
    scheduler: Any
    logger: MetricsLogger
    progress: Any
    peak: float | None  # per-device peak TFLOPS for MFU; None when unknown
    own_grad_norm: bool  # DeepSpeed reports the gradient norm for ZeRO and bf16 only; fp32 ZeRO-0 clips without it
    checkpoints_dir: str
    zero3_init: Any  # keeps HfDeepSpeedConfig alive while the model is in use (ZeRO-3 partitioned loading)
    step: int = 0
    resumed_from: str | None = None
    last_saved: int = -1
    stop_reason: str = "steps_done"
    losses: list[float] = dataclasses.field(default_factory=list)
    tokens_per_s: list[float] = dataclasses.field(default_factory=list)


def setup(config: TrainConfig, source: Iterable[Any] | None) -> Run:
    """Process group, model, objective, DeepSpeed engine, resume, metrics: everything before the first step."""
    if config.mode == "rlcs" and config.rlcs.ray:
        from vlmloom.trainer.rl_remote import ensure_ray

        # first: ray.init starts its servers by Popen(preexec_fn=...), Python in a forked child, which is only safe
        # before this process has threads (the process group's, torch's, DeepSpeed's)
        ensure_ray(config.rlcs.ray_num_cpus)
    device, rank, world_size = init_distributed(config.dist_backend)
    seed_everything(config.seed + rank)
    precision = ("bf16" if device.type == "cuda" else "fp32") if config.precision == "auto" else config.precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    # model
    attn = resolve_attn_implementation(config.attn_implementation, device)
    ds_config = deepspeed_config(config, world_size, precision)
    zero3_init = None
    spec = resolve_model_spec(config.model, config.data)
    if config.zero_stage == 3 and isinstance(spec, str):
        from transformers.integrations import HfDeepSpeedConfig

        # while this object lives, from_pretrained builds the model partitioned (deepspeed.zero.Init) instead of
        # materialising every weight on every rank. Not for random tiny models: partitioned init draws
        # different weights than the same seed does without ZeRO-3.
        zero3_init = HfDeepSpeedConfig(ds_config)
    model = load_model(spec, attn_implementation=attn, seed=config.seed, dtype=dtype)
    trainable = freeze_parts(model, vision=config.freeze_vision, projector=config.freeze_projector,
                             llm=config.freeze_llm)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # objective: what a step's batches are (packed shards, or RLCS rollouts) and the module that scores them
    image_processor = load_image_processor(config.image_processor)
    objective = build_objective(config, model, image_processor, source=source, rank=rank, world_size=world_size,
                                device=device)
    engine, scheduler = build_engine(objective.wrapper, config, ds_config)

    # resume
    checkpoints_dir = os.path.join(config.output, "checkpoints")
    step, resumed_from = 0, None
    found = ckpt.find_resume(checkpoints_dir, config.resume)
    if found is not None:
        state = ckpt.load(engine, *found, rank=rank)
        step, resumed_from = int(state["step"]), os.path.join(*found)
        objective.load_state_dict(state["loader"])

    is_main = rank == 0
    logger = MetricsLogger(config.output, tensorboard=config.tensorboard, enabled=is_main)
    if is_main:
        write_run_info(config, model, trainable, attn, precision, world_size)
    return Run(config=config, device=device, rank=rank, world_size=world_size, precision=precision, attn=attn,
               model=model, image_processor=image_processor, objective=objective, engine=engine,
               scheduler=scheduler, logger=logger, progress=make_progress(config, step, enabled=is_main),
               peak=peak_tflops(device, precision, config.peak_tflops),
               own_grad_norm=config.zero_stage == 0 and precision == "fp32", checkpoints_dir=checkpoints_dir,
               zero3_init=zero3_init, step=step, resumed_from=resumed_from,
               last_saved=step if resumed_from else -1)


def train_step(run: Run) -> bool:
    """One optimizer step over the objective's micro-batches, logged; False when the data ran out (no step)."""
    config, objective, engine, device, world_size = run.config, run.objective, run.engine, run.device, run.world_size
    t0 = time.perf_counter()
    micro_batches = objective.next_step()
    # every rank stops together when any one runs dry; otherwise the others would wait in a collective forever
    if all_reduce_sum(float(micro_batches is None), device) > 0:
        return False
    micro_batches = pad_to_common_count(micro_batches, objective, device)
    # normalise by the step's denominator over all ranks (label tokens for SFT; responses or tokens for RLCS)
    step_denominator = all_reduce_sum(sum(objective.denominator(b) for b in micro_batches), device)
    scale = step_loss_scale(step_denominator, world_size)
    lr = run.scheduler.get_last_lr()[0]  # the rate this step's update uses
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    grad_norm = None
    for i, batch in enumerate(micro_batches):
        # the step's last micro-batch is the accumulation boundary, however many the objective produced
        engine.set_gradient_accumulation_boundary(i == len(micro_batches) - 1)
        micro_loss, _ = engine(**objective.inputs(batch, device))
        engine.backward(micro_loss * scale, scale_wrt_gas=False)
        if i == len(micro_batches) - 1 and run.own_grad_norm:
            grad_norm = total_grad_norm(objective.wrapper)  # reduced over ranks by now; before clipping
        engine.step()  # DeepSpeed steps optimizer and scheduler at the accumulation boundary only
        loss_sum += micro_loss.detach().double()
    if not run.own_grad_norm and micro_batches:
        grad_norm = engine.get_global_grad_norm()
    run.step += 1
    loss = float(all_reduce_sum(loss_sum, device)) / max(step_denominator, 1e-12)
    step_time = time.perf_counter() - t0
    run.losses.append(loss)
    stats = sum_stats([dict.fromkeys(EMPTY_STATS, 0)] + [b["stats"] for b in micro_batches])
    tokens = all_reduce_sum(stats["tokens"], device)
    run.tokens_per_s.append(tokens / step_time)
    if run.step % config.log_every == 0 or run.step == config.steps:
        flops = all_reduce_sum(step_flops(run.model.config, stats), device)
        record = {
            "loss": loss, "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens": int(tokens), "loss_denominator": step_denominator,
            "samples": int(all_reduce_sum(stats["samples"], device)),
            "tokens_per_s": tokens / step_time, "step_time_s": step_time,
            "padding_fraction": 1.0 - stats["tokens"] / max(stats["capacity"], 1),
            "tflops_per_device": flops / step_time / world_size / 1e12,
            "mfu": (flops / step_time / world_size / 1e12 / run.peak) if run.peak else None,
            **objective.step_metrics(),
        }
        run.logger.log(run.step, record)
        run.progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / step_time:.0f}")
    run.progress.update(1)
    return True


def save_checkpoint(run: Run) -> None:
    ckpt.save(run.engine, run.checkpoints_dir, run.step, loader_state=run.objective.state_dict(), rank=run.rank,
              keep=run.config.keep_checkpoints)
    run.last_saved = run.step


def finish(run: Run) -> dict[str, Any]:
    """Last checkpoint, Hugging Face export, summary.json; returns the summary."""
    config = run.config
    if run.step != run.last_saved and run.step > 0:
        save_checkpoint(run)
    export_dir = None
    if config.export:
        export_dir = ckpt.export_hf(run.engine, run.model, os.path.join(config.output, "hf_model"),
                                    zero_stage=config.zero_stage, rank=run.rank,
                                    tokenizer_dir=run.objective.tokenizer_dir, image_processor=run.image_processor)
    run.logger.close()
    objective_summary = run.objective.summary()
    run.objective.close()
    run.zero3_init = None
    is_main = run.rank == 0
    losses = run.losses
    summary = {
        "steps": run.step, "stop_reason": run.stop_reason, "resumed_from": run.resumed_from, "losses": losses,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "tokens_per_s": float(np.median(run.tokens_per_s)) if run.tokens_per_s else None,
        "attn_implementation": run.attn, "precision": run.precision, "world_size": run.world_size,
        "zero_stage": config.zero_stage, "output": config.output, "export_dir": export_dir,
        "metrics": run.logger.path if is_main else None, **objective_summary,
    }
    if is_main:
        with open(os.path.join(config.output, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
    return summary


def build_engine(wrapper: torch.nn.Module, config: TrainConfig, ds_config: dict[str, Any]) -> tuple[Any, Any]:
    """DeepSpeed engine around `wrapper` (its trainable parameters) with the config's lr schedule;
    returns (engine, scheduler). Call `init_distributed` first: DS_ACCELERATOR must be set before deepspeed loads."""
    import deepspeed

    engine, _, _, scheduler = deepspeed.initialize(
        model=wrapper, model_parameters=[p for p in wrapper.parameters() if p.requires_grad],
        config=ds_config, lr_scheduler=lambda opt: lr_schedule(opt, config))
    return engine, scheduler


def deepspeed_config(config: TrainConfig, world_size: int, precision: str) -> dict[str, Any]:
    """DeepSpeed JSON config: ZeRO stage, bf16 on GPU, torch AdamW (no compiled optimizer op)."""
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.micro_batch * config.grad_accum * world_size,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "optimizer": {"type": "AdamW", "params": {
            "lr": config.lr, "betas": list(config.betas), "eps": 1e-8, "weight_decay": config.weight_decay,
            "torch_adam": True}},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to lr · min_lr_ratio at `steps`."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def init_distributed(backend: str = "auto") -> tuple[torch.device, int, int]:
    """Join (or start, as a single process) the process group; returns (device, rank, world size).

    Under `deepspeed`/`torchrun` the launcher's RANK/WORLD_SIZE/LOCAL_RANK are used; alone, a one-process group
    on a free local port. CPU runs use gloo and DS_ACCELERATOR=cpu.
    """
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=("nccl" if cuda else "gloo") if backend == "auto" else backend)
    return device, dist.get_rank(), dist.get_world_size()


def total_grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_reduce_sum(value: float | torch.Tensor, device: torch.device) -> float:
    import torch.distributed as dist

    tensor = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return float(tensor)


def pad_to_common_count(micro_batches: list[dict[str, Any]], objective: Objective,
                        device: torch.device) -> list[dict[str, Any]]:
    """Every rank must run as many forward/backward passes as the others (ZeRO reduces gradients in them):
    a rank with fewer micro-batches repeats its last one with zero loss weight (`objective.null_batch`). RLCS
    steps vary in length."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return micro_batches
    count = torch.tensor(len(micro_batches), device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if len(micro_batches) < int(count):
        if not micro_batches:
            raise RuntimeError("a rank has no micro-batch while others do: give every rank enough prompts "
                               "(rlcs.prompts_per_iteration) so each keeps at least one informative group")
        filler = objective.null_batch(micro_batches[-1])
        micro_batches = micro_batches + [filler] * (int(count) - len(micro_batches))
    return micro_batches


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_progress(config: TrainConfig, initial: int, *, enabled: bool) -> Any:
    from vlmloom.schemas.progress import progress_bar  # the one bar look of curate, pack and train

    return progress_bar("train", config.steps, enabled=enabled and config.progress, initial=initial, unit="step")


def write_run_info(config: TrainConfig, model: Any, trainable: dict[str, int], attn: str, precision: str,
                   world_size: int) -> None:
    os.makedirs(config.output, exist_ok=True)
    info = {"config": dataclasses.asdict(config), "model": describe(model), "trainable_by_part": trainable,
            "attn_implementation": attn, "precision": precision, "world_size": world_size,
            "torch": torch.__version__}
    with open(os.path.join(config.output, "run.json"), "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, default=str)
