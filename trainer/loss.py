"""Token-level causal-LM loss over packed batches, normalised over a whole optimizer step.

`CausalLMLoss(model)` is the module DeepSpeed wraps: batch → (sum of token losses, number of label tokens).
`step_loss_scale(...)` turns the sum into the value to back-propagate so that, after DeepSpeed's averaging
over data-parallel ranks, the gradient is that of  Σ token losses / Σ label tokens  over every micro-batch of
every rank in the step — not a mean of per-micro-batch means.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vlmloom.schemas.packed import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ cross-entropy over label positions. logits: (N, V); targets: (N,) with -100 = no loss. Returns fp32 ()."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def step_loss_scale(step_label_tokens: int, world_size: int) -> float:
    """Factor for a micro-batch's loss sum: DeepSpeed averages gradients over `world_size` ranks (and we call
    backward without its 1/grad_accum), so sum · world_size / (label tokens of the whole step, all ranks)."""
    return world_size / max(step_label_tokens, 1)


class CausalLMLoss(torch.nn.Module):
    """Wraps `Glm4vForConditionalGeneration`; forward(batch) → (loss_sum fp32, label_tokens int64).

    Logits are computed only at label positions (a (label_tokens, vocab) matrix instead of (B·L, vocab)). When a
    batch has no image and the vision tower trains, a 2×2-patch dummy image goes through it and its output is
    added ×0: every rank then runs the same modules, which ZeRO-3's parameter gathering needs.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def target_logits(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                      mm_token_type_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                      image_grid_thw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at the target positions only, (N, V) in mask order, plus the hidden states (B, L, H) and the
        (B, L) target mask: the LM head never runs on positions without a target."""
        out = self.model.model(input_ids=input_ids, position_ids=position_ids, pixel_values=pixel_values,
                               image_grid_thw=image_grid_thw, mm_token_type_ids=mm_token_type_ids, use_cache=False)
        hidden = out.last_hidden_state
        mask = targets != IGNORE_INDEX
        return self.model.lm_head(hidden[mask]), hidden, mask

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                mm_token_type_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden, mask = self.target_logits(input_ids, position_ids, targets, mm_token_type_ids, pixel_values,
                                                  image_grid_thw)
        loss_sum = token_loss_sum(logits, targets[mask])
        if pixel_values is None and self._vision_trains():
            loss_sum = loss_sum + 0.0 * self._dummy_vision(hidden).sum()
        return loss_sum, mask.sum()

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Full (B, L, V) logits of a batch (for tests and evaluation)."""
        out = self.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False)
        return out.logits

    def _vision_trains(self) -> bool:
        return any(p.requires_grad for p in self.model.model.visual.parameters())

    def _dummy_vision(self, like: torch.Tensor) -> torch.Tensor:
        vcfg = self.model.config.vision_config
        merge = vcfg.spatial_merge_size
        grid = torch.tensor([[1, merge, merge]], device=like.device)
        patch_dim = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size**2
        pixels = torch.zeros(merge * merge, patch_dim, device=like.device, dtype=like.dtype)
        return self.model.model.visual(pixels, grid_thw=grid).pooler_output


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The tensors of a collated batch that `CausalLMLoss.forward` takes, moved to `device`."""
    keys = ("input_ids", "position_ids", "targets", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    return {k: (batch[k].to(device, non_blocking=True) if batch[k] is not None else None) for k in keys}


class PolicyGradientLoss(CausalLMLoss):
    """The RLCS module DeepSpeed wraps: packed rollouts → (Σ w·policy loss, loss tokens); no KL, no entropy.

    Targets are the sampled response tokens (shifted like SFT labels); per target position the batch carries
    `old_log_probs`, `advantages` and `loss_weights` (B, L) (the aggregation weights: 1/T_s per response, or 1).
    Log-probs use logits / temperature, the distribution the rollouts were sampled from.
    """

    def __init__(self, model: Any, *, policy_loss: str, clip_low: float, clip_high: float, temperature: float,
                 clip_ratio_c: float = 0.0):
        super().__init__(model)
        self.policy_loss, self.clip_low, self.clip_high, self.temperature = policy_loss, clip_low, clip_high, temperature
        self.clip_ratio_c = clip_ratio_c
        self.clipped_tokens = 0  # side channel for metrics, reset by the objective each step
        self.reset_stats()

    def reset_stats(self) -> None:
        """Sums over the loss tokens of a step (side channel for metrics; the objective resets it every step)."""
        self.stats = {"tokens": 0, "clipped_high": 0, "clipped_low": 0, "dual_clipped": 0, "ratio_sum": 0.0,
                      "ratio_max": 0.0, "entropy_sum": 0.0, "weighted_loss": 0.0, "weight": 0.0}

    def token_log_probs(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                        mm_token_type_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                        image_grid_thw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(target) at every target position, in mask order: (N,) fp32, plus the hidden states (B, L, H)."""
        logits, hidden, mask = self.target_logits(input_ids, position_ids, targets, mm_token_type_ids, pixel_values,
                                                  image_grid_thw)
        scaled = logits.float() / self.temperature
        if torch.is_grad_enabled() and scaled.shape[0]:
            with torch.no_grad():  # entropy is a metric only: no entropy term in the loss (the paper's choice)
                log_p = torch.log_softmax(scaled, dim=-1)
                self.stats["entropy_sum"] += float(-(log_p.exp() * log_p).sum(-1).sum())
        return -F.cross_entropy(scaled, targets[mask], reduction="none"), hidden

    def _record(self, out: Any, weights: torch.Tensor, loss_sum: torch.Tensor) -> None:
        s = self.stats
        n = int(out.loss.shape[0])
        s["tokens"] += n
        s["clipped_high"] += int(out.clipped_high.sum())
        s["clipped_low"] += int(out.clipped_low.sum())
        s["dual_clipped"] += int(out.dual_clipped.sum())
        self.clipped_tokens += int(out.clipped_high.sum() + out.clipped_low.sum())
        if n:
            s["ratio_sum"] += float(out.ratio.double().sum())
            s["ratio_max"] = max(s["ratio_max"], float(out.ratio.max()))
        s["weighted_loss"] += float(loss_sum.detach())
        s["weight"] += float(weights.double().sum())

    def step_metrics(self) -> dict[str, float]:
        """Per-step policy metrics from the summed stats: clip fractions over loss tokens, ratio mean/max,
        mean token entropy, and the policy loss per aggregation weight (on this rank)."""
        s, n = self.stats, max(self.stats["tokens"], 1)
        return {"policy_loss": s["weighted_loss"] / s["weight"] if s["weight"] else 0.0,
                "clip_fraction_high": s["clipped_high"] / n, "clip_fraction_low": s["clipped_low"] / n,
                "dual_clip_fraction": s["dual_clipped"] / n, "ratio_mean": s["ratio_sum"] / n,
                "ratio_max": s["ratio_max"], "entropy": s["entropy_sum"] / n, "loss_tokens": s["tokens"]}

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                mm_token_type_ids: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                loss_weights: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from vlmloom.trainer.rl_algos import POLICY_LOSSES

        log_probs, hidden = self.token_log_probs(input_ids, position_ids, targets, mm_token_type_ids, pixel_values,
                                                 image_grid_thw)
        mask = targets != IGNORE_INDEX
        out = POLICY_LOSSES.get(self.policy_loss)(log_probs, old_log_probs[mask].float(), advantages[mask].float(),
                                                  clip_low=self.clip_low, clip_high=self.clip_high,
                                                  clip_ratio_c=self.clip_ratio_c)
        loss_sum = (out.loss * loss_weights[mask].float()).sum()
        self._record(out, loss_weights[mask].float(), loss_sum)
        if pixel_values is None and self._vision_trains():
            loss_sum = loss_sum + 0.0 * self._dummy_vision(hidden).sum()
        return loss_sum, mask.sum()
