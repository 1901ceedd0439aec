"""RLCS rollouts: prompts → k responses each from the current policy (force answering included) → rewards.

    RLPrompt ──PromptRenderer (once per prompt)──▶ RenderedPrompt          trainer/rl_prompts.py
      ──a generation backend (ROLLOUT_BACKENDS: transformers | vllm)──▶ Rollouts   trainer/rl_backends.py
      ──reward_items──▶ LocalRewards | RayRewards (rewards), RayRollout (a backend in a Ray actor)
                                                                            trainer/rl_remote.py

This module gathers the three under one import (`from vlmloom.trainer.rollout import …`) for the objective,
tests and demos; the code lives in the modules above.
"""
from __future__ import annotations

from vlmloom.trainer.rl_backends import (ROLLOUT_BACKENDS, GenerationSettings, Rollout, RolloutBackend,
                                         TransformersRollout, VLLMRollout, VLLMWeightLoader, force_answer_cut,
                                         make_rollout_backend, split_at_end)
from vlmloom.trainer.rl_prompts import (PromptRenderer, RenderedPrompt, RLPrompt, load_prompts, prompt_from_sample,
                                        training_sample)
from vlmloom.trainer.rl_remote import LocalRewards, RayRewards, RayRollout, ensure_ray, reward_items

__all__ = ["ROLLOUT_BACKENDS", "GenerationSettings", "Rollout", "RolloutBackend", "TransformersRollout",
           "VLLMRollout", "VLLMWeightLoader", "force_answer_cut", "make_rollout_backend", "split_at_end",
           "PromptRenderer", "RenderedPrompt", "RLPrompt", "load_prompts", "prompt_from_sample", "training_sample",
           "LocalRewards", "RayRewards", "RayRollout", "ensure_ray", "reward_items"]
