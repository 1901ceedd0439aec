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
class CurriculumConfig:
    """Curriculum sampling of RLCS prompts (why these defaults: trainer/curriculum.py)."""

    enabled: bool = True  # false: prompts are drawn uniformly (the baseline)
    num_tiers: int = 5  # equal-width pass-rate tiers over [0, 1]
    weight_fn: str = "informative"  # informative | gaussian | variance (rl_algos.CURRICULUM_WEIGHTS)
    weight_params: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. {center: 0.5, width: 0.25}
    min_weight: float = 0.05  # floor of a tier's weight: solved/unsolved prompts are still revisited
    online_decay: float = 0.5  # a prompt's earlier online counts are multiplied by this when it is rolled out again
    offline_decay: float = 0.5  # the offline estimate's weight is multiplied by this per online group (1 = never fades)
    offline_pass_rates: str = ""  # JSONL {id, pass_rate, k} from `vlmloom rlcs-passk`; "" = none
    offline_weight: float = 4.0  # pseudo-trials an offline pass rate counts for against online rollouts
    unknown_pass_rate: float = 0.5  # prior pass rate of prompts without an offline rate (one pseudo-trial)

    def validate(self) -> None:
        if self.num_tiers < 1:
            raise ConfigError(f"rlcs.curriculum.num_tiers ({self.num_tiers}) must be >= 1")
        from vlmloom.trainer.rl_algos import CURRICULUM_WEIGHTS

        if self.weight_fn not in CURRICULUM_WEIGHTS:
            raise ConfigError(f"rlcs.curriculum.weight_fn {self.weight_fn!r}: use one of {CURRICULUM_WEIGHTS.names()}")
        if not 0.0 <= self.online_decay <= 1.0 or not 0.0 <= self.unknown_pass_rate <= 1.0 \
                or not 0.0 <= self.offline_decay <= 1.0:
            raise ConfigError("rlcs.curriculum.online_decay, offline_decay and unknown_pass_rate must be within [0, 1]")
        if self.min_weight <= 0 or self.offline_weight <= 0:
            raise ConfigError("rlcs.curriculum.min_weight and offline_weight must be > 0 (a zero weight would "
                              "starve a tier forever)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLCSConfig:
    """`mode: rlcs`: rollouts, rewards, GRPO with clip-higher, curriculum and dynamic sampling expansion.

    One iteration = draw ⌈B·expansion EMA⌉ prompts → k rollouts each → rewards → keep the B most balanced
    informative groups → `updates_per_iteration` optimizer steps on packed rollouts. `steps` counts optimizer steps.
    """

    prompts: list[str] = dataclasses.field(default_factory=list)  # JSONL prompt files or curated dirs (qa + answer)
    tokenizer: str = ""  # tokenizer directory; "" = the model directory
    group_size: int = 8  # k responses per prompt
    prompts_per_iteration: int = 8  # B: groups kept for the update of one iteration
    dynamic_sampling: bool = True  # false: roll out exactly B prompts and keep every informative group
    expansion_max: float = 4.0  # cap of the expansion factor: at most ceil(B * expansion_max) prompts per iteration
    expansion_decay: float = 0.9  # EMA decay of r (uninformative-group share); factor = min(1 / (1 - EMA(r)), max)
    advantage: str = "grpo"  # grpo | grpo_no_std (rl_algos.ADVANTAGE_ESTIMATORS)
    advantage_std: str = "population"  # grpo's group std: population (÷k, default) | unbiased (÷(k−1), as verl)
    policy_loss: str = "clip_higher"  # rl_algos.POLICY_LOSSES
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_ratio_c: float = 0.0  # dual-clip bound for tokens with A < 0 (verl's default is 3.0); 0 = off, else > 1
    loss_agg: str = "seq-mean-token-mean"  # per response (paper default) | token-mean
    updates_per_iteration: int = 1  # optimizer steps per iteration (mini-batches of the kept groups)
    # stop once this many rollouts (responses) were generated, the last iteration drawing only what is left
    # (⌈left / k⌉ prompts), so arms with and without dynamic sampling compare at equal budgets; 0 = no budget
    rollout_budget: int = 0
    max_new_tokens: int = 1024  # response budget (thinking + answer)
    max_think_tokens: int = 768  # no </think> within this many tokens: force answering
    force_answer_tokens: int = 64  # tokens generated after the appended </think><answer>
    temperature: float = 1.0
    top_p: float = 1.0  # the paper samples with top-p 1.0
    pass_threshold: float = 1.0  # a response "passes" (curriculum pass rate) when its score >= this
    seq_len: int = 4096  # packed row length of the update batches
    packer: str = "best_fit_decreasing"  # packing.packers.PACKERS
    rollout_backend: str = "transformers"  # transformers | vllm (trainer/rl_backends.py ROLLOUT_BACKENDS)
    generation_batch: int = 16  # prompts per generate call (prompts of equal length share a call)
    system_prompt: str = ""  # prepended as a system turn to every prompt; "" = none
    rewards: str | dict[str, Any] = dataclasses.field(default_factory=dict)  # rewards YAML path or its mapping
    ray: bool = False  # rollout and reward workers as Ray actors (pip install 'vlmloom[rl]')
    ray_num_cpus: int = 2  # CPUs for a local ray.init when no cluster is running
    curriculum: CurriculumConfig = dataclasses.field(default_factory=CurriculumConfig)

    def validate(self) -> None:
        for name in ("group_size", "prompts_per_iteration", "updates_per_iteration", "max_new_tokens", "seq_len",
                     "generation_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rlcs.{name} ({getattr(self, name)}) must be >= 1")
        if self.group_size < 2:
            raise ConfigError(f"rlcs.group_size ({self.group_size}) must be >= 2: GRPO compares responses in a group")
        if self.expansion_max < 1:
            raise ConfigError(f"rlcs.expansion_max ({self.expansion_max}) must be >= 1 (1 disables expansion)")
        if not 0.0 <= self.expansion_decay < 1.0:
            raise ConfigError(f"rlcs.expansion_decay ({self.expansion_decay}) must be within [0, 1)")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ConfigError(f"rlcs.clip_low ({self.clip_low}) must be in [0, 1) and clip_high ({self.clip_high}) >= 0")
        if self.rollout_budget < 0:
            raise ConfigError(f"rlcs.rollout_budget ({self.rollout_budget}) must be >= 0 (0 = no budget)")
        if self.advantage_std not in ("population", "unbiased"):
            raise ConfigError(f"rlcs.advantage_std {self.advantage_std!r}: use population or unbiased")
        if self.clip_ratio_c and self.clip_ratio_c <= 1.0:
            raise ConfigError(f"rlcs.clip_ratio_c ({self.clip_ratio_c}) must be > 1 (dual-clip) or 0 (off)")
        if not 0 < self.max_think_tokens <= self.max_new_tokens or self.force_answer_tokens < 1:
            raise ConfigError(f"rlcs: need 0 < max_think_tokens ({self.max_think_tokens}) <= max_new_tokens "
                              f"({self.max_new_tokens}) and force_answer_tokens >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("rlcs.temperature must be > 0 and rlcs.top_p within (0, 1]")
        for key, registry in rlcs_registries().items():
            if getattr(self, key) not in registry:
                raise ConfigError(f"rlcs.{key} {getattr(self, key)!r}: unknown {registry.what}; "
                                  f"known: {', '.join(registry.names())}")
        self.curriculum.validate()


def rlcs_registries() -> dict[str, Any]:
    """The `rlcs:` keys that name a registry entry → that registry (checked by RLCSConfig.validate, so a typo fails
    at load time with the known names rather than at the first iteration)."""
    from vlmloom.packing.packers import PACKERS
    from vlmloom.trainer import rl_algos
    from vlmloom.trainer.rl_backends import ROLLOUT_BACKENDS

    return {"advantage": rl_algos.ADVANTAGE_ESTIMATORS, "policy_loss": rl_algos.POLICY_LOSSES,
            "loss_agg": rl_algos.LOSS_AGGREGATIONS, "rollout_backend": ROLLOUT_BACKENDS, "packer": PACKERS}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training job: model, data, optimisation, DeepSpeed, checkpoints, metrics."""

    # pretrain: records without labels learn every text token; sft: records must carry the packer's labels
    # (assistant spans); both use the token-level loss. rlcs: reinforcement learning with curriculum sampling
    # on the `rlcs:` prompts (the loop is the same; the objective's batches are packed rollouts).
    mode: Literal["pretrain", "sft", "rlcs"] = "pretrain"
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

    rlcs: RLCSConfig = dataclasses.field(default_factory=RLCSConfig)  # mode: rlcs only

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
        if self.mode == "rlcs":
            self.rlcs.validate()
            if self.zero_stage == 3:
                raise ConfigError("mode: rlcs generates with the live model; ZeRO-3 partitions it: use zero_stage <= 2")
