"""vlmloom.trainer.rewards: domain verifiers for RLCS and `vlmloom reward` (torch-free).

    extract.py   the format gate: extract_answer(response) -> Extraction(answer, ok, reason)
    base.py      RewardItem, RewardResult, Score, Verifier, VERIFIERS (the registry)
    config.py    RewardConfig (domain → verifier routes, per-verifier params, pool size, error thresholds)
    system.py    RewardSystem(config).score_batch(items) -> results; stats(); RewardErrorRateExceeded
    pool.py      KillablePool: worker processes killed on a per-task deadline
    text.py      text / choice / ocr verifiers (bit-parallel edit distance and LCS)
    numbers.py   number parsing (exact Fractions) and the numeric (chart) and counting verifiers
    symbolic.py  the math verifier (a guard against hedges and undeclared variables, math-verify, sandboxed)
    boxes.py     grounding verifier (IoU, one-to-one matching, 0–1000 coordinates)
    gui.py       GUI action syntax, safe parser and verifier
    judge.py     llm_judge verifier (OpenAI-compatible server)
    cli.py       `vlmloom reward INPUT.jsonl [--config rewards.yaml] [--output OUT.jsonl]`
Imports no torch and no deepspeed (a test checks), so reward workers stay light.
"""
from vlmloom.trainer.rewards import boxes, gui, judge, numbers, symbolic, text  # noqa: F401  (register verifiers)
from vlmloom.trainer.rewards.base import (VERIFIERS, RewardItem, RewardResult, Score, Verifier,  # noqa: F401
                                          VerifierError)
from vlmloom.trainer.rewards.config import (DEFAULT_DOMAINS, FormatConfig, RewardConfig,  # noqa: F401
                                           load_reward_config)
from vlmloom.trainer.rewards.extract import Extraction, extract_answer, extract_box, ground_truth_answer  # noqa: F401
from vlmloom.trainer.rewards.system import RewardErrorRateExceeded, RewardSystem  # noqa: F401

__all__ = ["VERIFIERS", "DEFAULT_DOMAINS", "Extraction", "FormatConfig", "RewardConfig", "RewardErrorRateExceeded",
           "RewardItem", "RewardResult", "RewardSystem", "Score", "Verifier", "VerifierError", "extract_answer",
           "extract_box", "ground_truth_answer", "load_reward_config"]
