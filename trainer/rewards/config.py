"""RewardConfig: which verifier scores which domain, with what knobs, how parallel, and when to fail.

YAML (standalone for `vlmloom reward --config`, or the `rewards:` section of an RLCS train YAML):

    domains:                 # merged over DEFAULT_DOMAINS: add or re-route domains
      physics: physics_numeric
      open_qa: llm_judge
    verifiers:               # instance name → params; `type` picks the registered class (default: the name)
      numeric: {rel_tol: 0.02}
      physics_numeric: {type: numeric, rel_tol: 0.05}
      llm_judge: {base_url: http://localhost:8000/v1}
    timeout_s: 10            # symbolic (math) check limit per item: the worker process is killed past it
    rule_timeout_s: 5        # the same for every other rule verifier (they all run in killable workers)
    workers: 2               # process pool size; 0 = a pool of one (no verifier runs in the calling process)
    max_timeout_rate: 0.01   # per verifier: more items late twice than this share fails the run
    max_error_rate: 0.02
    min_calls_for_error_rate: 50

Every instance's params are built into its verifier's `Params` dataclass at load time, so a typo fails before
any scoring with the usual did-you-mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmloom.schemas.config import ConfigError, build_config, load_yaml
from vlmloom.trainer.rewards.base import VERIFIERS
from vlmloom.trainer.rewards.extract import (DEFAULT_IGNORED_TRAILING, DEFAULT_MAX_ANSWER_CHARS,
                                             DEFAULT_MAX_RESPONSE_CHARS)

# domain → verifier instance name. An instance named like a registered verifier needs no `verifiers:` entry.
DEFAULT_DOMAINS: dict[str, str] = {
    "math": "math",
    "chart": "numeric",
    "numeric": "numeric",
    "choice": "choice",
    "ocr": "ocr",
    "grounding": "grounding",
    "gui": "gui",
    "text": "text",
    "counting": "counting",
}


@dataclass(frozen=True, kw_only=True)
class FormatConfig:
    require_think: bool = True  # false: `<answer>…</answer>` alone passes (non-thinking outputs)
    max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS  # longer responses: response_too_long, score 0
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS  # longer box content: answer_too_long, score 0
    ignored_trailing: tuple[str, ...] = DEFAULT_IGNORED_TRAILING  # end-of-turn tokens allowed after </answer>

    def validate(self) -> None:
        if self.max_response_chars < 1 or self.max_answer_chars < 1:
            raise ConfigError("format.max_response_chars and format.max_answer_chars must be >= 1")


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    domains: dict[str, str] = field(default_factory=dict)  # domain → verifier instance, merged over DEFAULT_DOMAINS
    verifiers: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance → params (+ `type`)
    default_verifier: str = ""  # instance for domains not routed; "" = an unrouted domain is an error
    format: FormatConfig = field(default_factory=FormatConfig)
    timeout_s: float = 10.0  # per-item limit of sandboxed (symbolic maths) checks; the worker is killed past it
    # per-item limit of every other rule verifier (all parsers are linear-time: a real item takes milliseconds)
    rule_timeout_s: float = 5.0
    workers: int = 2  # process-pool size; 0 = a pool of one (every rule verifier runs in a killable worker)
    max_error_rate: float = 0.02  # per verifier: verifier_error share above this raises RewardErrorRateExceeded
    min_calls_for_error_rate: int = 50  # the error rate is checked only after this many calls of a verifier
    # per verifier: share of items late twice (timeout) above this raises too, after min_calls_for_error_rate
    # items; 1 disables. Timeouts make rewards depend on machine load, so more than ~1% is a fault to fix.
    max_timeout_rate: float = 0.01
    plugins: tuple[str, ...] = ()  # modules imported (here and in workers) that register extra verifiers

    @property
    def routes(self) -> dict[str, str]:
        """domain → verifier instance name (defaults plus `domains`)."""
        return {**DEFAULT_DOMAINS, **self.domains}

    def instance_type(self, instance: str) -> str:
        params = self.verifiers.get(instance, {})
        return str(params.get("type", instance))

    def instance_params(self, instance: str) -> Any:
        """The instance's params as its verifier's Params dataclass (fix-it errors on a bad key)."""
        cls = VERIFIERS.get(self.instance_type(instance))
        raw = {k: v for k, v in self.verifiers.get(instance, {}).items() if k != "type"}
        return build_config(cls.Params, raw, f"rewards.verifiers.{instance}")

    def validate(self) -> None:
        import_plugins(self.plugins)
        used = set(self.routes.values()) | ({self.default_verifier} if self.default_verifier else set())
        for instance in sorted(used | set(self.verifiers)):
            kind = self.instance_type(instance)
            if kind not in VERIFIERS:
                hint = f"add rewards.verifiers.{instance}.type" if instance not in self.verifiers else \
                    f"fix rewards.verifiers.{instance}.type"
                raise ConfigError(f"verifier {instance!r} has unknown type {kind!r} ({hint}); "
                                  f"registered verifiers: {', '.join(VERIFIERS.names())}")
            if not isinstance(self.verifiers.get(instance, {}), dict):
                raise ConfigError(f"rewards.verifiers.{instance}: expected a mapping of params")
            if instance in used:
                self.instance_params(instance)
        if self.timeout_s <= 0 or self.rule_timeout_s <= 0:
            raise ConfigError("rewards.timeout_s and rewards.rule_timeout_s must be > 0 (seconds per item)")
        if self.workers < 0:
            raise ConfigError(f"rewards.workers ({self.workers}) must be >= 0 (0 = in-process)")
        if not 0.0 <= self.max_error_rate <= 1.0 or not 0.0 <= self.max_timeout_rate <= 1.0:
            raise ConfigError("rewards.max_error_rate and rewards.max_timeout_rate must be in [0, 1]")
        if self.min_calls_for_error_rate < 1:
            raise ConfigError("rewards.min_calls_for_error_rate must be >= 1")


def import_plugins(modules: tuple[str, ...] | list[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"rewards.plugins: cannot import {name!r} ({exc}); put it on PYTHONPATH") from exc


def shipped_config_path() -> str:
    """The defaults written out as YAML (rewards.yaml, package data of vlmloom.trainer.rewards): a starting point
    to copy and edit; it is a real file in an installed wheel too."""
    import importlib.resources

    return str(importlib.resources.files("vlmloom.trainer.rewards").joinpath("rewards.yaml"))


def load_reward_config(source: str | dict[str, Any] | None = None) -> RewardConfig:
    """RewardConfig from a YAML path, a mapping (a whole file or its `rewards:` section), or None (defaults)."""
    data = load_yaml(source) if isinstance(source, str) else dict(source or {})
    if set(data) == {"rewards"}:
        data = data["rewards"] or {}
    return build_config(RewardConfig, data, "rewards")
