"""RewardSystem: a batch of `RewardItem`s → one `RewardResult` each (order kept), with counts and a failure rule.

Per item: route the domain to a verifier instance (RewardConfig.routes), run the format gate on the response,
read the ground truth through the same box extractor, then run the verifier:
- every rule verifier runs in a `KillablePool` worker with a deadline (`timeout_s` for sandboxed symbolic maths,
  `rule_timeout_s` for the others), in every mode: `workers: 0` is a pool of one, never an in-process call,
  because a Python thread or signal cannot stop a regular expression or a C parser that does not return;
- I/O-bound verifiers (the LLM judge) run on threads here, bounded by their own HTTP timeouts and retries,
  and the batch waits for them no longer than those allow (`timeout` past it).
A late worker is killed and the item is tried once more on a fresh worker (a load spike or an unlucky neighbour
must not decide a reward); late again, it scores 0 with reason `timeout`. Per verifier the stats count first
timeouts (`retried`), final timeouts and errors. A verifier that raises (or returns a score
outside [0, 1]) scores 0 with reason `verifier_error`, is logged and counted; once a verifier has been invoked
`min_calls_for_error_rate` times, an error share above `max_error_rate` raises `RewardErrorRateExceeded`
(likewise timeouts above `max_timeout_rate`). Nothing is silently 0.

    with RewardSystem(load_reward_config("rewards.yaml")) as rewards:
        results = rewards.score_batch(items)
        print(rewards.stats())
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Sequence

from vlmloom.trainer.rewards.base import (BAD_GROUND_TRUTH, TIMEOUT, VERIFIER_ERROR, VERIFIERS, RewardItem,
                                          RewardResult, Score, Verifier, VerifierStats)
from vlmloom.trainer.rewards.config import RewardConfig, import_plugins
from vlmloom.trainer.rewards.extract import extract_answer, ground_truth_answer
from vlmloom.trainer.rewards.pool import KillablePool

log = logging.getLogger("vlmloom.rewards")
_LOGGED_ERRORS_PER_VERIFIER = 5  # then every 100th: a broken verifier must be visible, not flood the log


class RewardErrorRateExceeded(RuntimeError):
    """A verifier's error (or timeout) share passed the configured threshold; `stats` holds the counts."""

    def __init__(self, message: str, stats: dict[str, Any]):
        super().__init__(message)
        self.stats = stats


def build_verifiers(config: RewardConfig) -> dict[str, Verifier]:
    """Every instance a route (or the default) uses, constructed from its params."""
    used = set(config.routes.values()) | ({config.default_verifier} if config.default_verifier else set())
    return {name: VERIFIERS.get(config.instance_type(name))(config.instance_params(name)) for name in sorted(used)}


def _worker_setup(config: RewardConfig) -> Callable[[Any], tuple[float, str]]:
    """Runs once in each pool worker: import plugins, build verifiers lazily, return the task handler."""
    import_plugins(config.plugins)
    verifiers: dict[str, Verifier] = {}

    def handle(payload: tuple[str, str, Any, RewardItem]) -> tuple[float, str]:
        instance, prediction, truth, item = payload
        if instance not in verifiers:
            verifiers[instance] = VERIFIERS.get(config.instance_type(instance))(config.instance_params(instance))
        score, reason = verifiers[instance].verify(prediction, truth, item)
        return float(score), str(reason)

    return handle


def _thread_bound(verifier: Verifier, items: int) -> float:
    """Seconds an I/O-bound verifier may take for `items` calls: every attempt's timeout and backoff (its params'
    `timeout_seconds`, `max_retries`, `backoff_seconds`), per wave of `concurrency` calls, plus slack."""
    p = verifier.params
    timeout, retries = float(getattr(p, "timeout_seconds", 30.0)), int(getattr(p, "max_retries", 0))
    backoff = float(getattr(p, "backoff_seconds", 0.0)) * (2 ** (retries + 1))
    waves = -(-items // max(1, int(getattr(p, "concurrency", 1))))
    return waves * (timeout * (retries + 1) + backoff) + 10.0


def _checked(value: Any) -> Score:
    """A verifier's return value as a Score, or ValueError (counted as verifier_error)."""
    try:
        score, reason = value
        score = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"verifier returned {value!r}, expected Score(score, reason)") from None
    if not math.isfinite(score) or not 0.0 <= score <= 1.0 or not isinstance(reason, str) or not reason:
        raise ValueError(f"verifier returned {value!r}: score must be in [0, 1] with a non-empty reason")
    return Score(score, reason)


class RewardSystem:
    def __init__(self, config: RewardConfig | None = None):
        self.config = config or RewardConfig()
        self.config.validate()
        self.verifiers = build_verifiers(self.config)
        self._stats: dict[str, VerifierStats] = {name: VerifierStats() for name in self.verifiers}
        self._pool: KillablePool | None = None
        self._threads: ThreadPoolExecutor | None = None

    # --- public API -------------------------------------------------------------------------------------------
    def route(self, domain: str) -> str:
        """The verifier instance that scores `domain`; KeyError listing the known domains otherwise."""
        instance = self.config.routes.get(domain) or self.config.default_verifier
        if not instance:
            raise KeyError(f"no verifier for domain {domain!r}; known domains: {', '.join(sorted(self.config.routes))} "
                           "(add rewards.domains.<domain>: <verifier> or set rewards.default_verifier)")
        return instance

    def score(self, item: RewardItem) -> RewardResult:
        return self.score_batch([item])[0]

    def score_batch(self, items: Sequence[RewardItem]) -> list[RewardResult]:
        """One result per item, in order. Raises RewardErrorRateExceeded after counting this batch."""
        instances = [self.route(item.domain) for item in items]  # fail before any work on an unrouted domain
        results: list[RewardResult | None] = [None] * len(items)
        started = [0.0] * len(items)
        in_pool: list[tuple[int, Any, float]] = []
        in_threads: list[tuple[int, str, Any]] = []
        fmt = self.config.format
        for i, (item, instance) in enumerate(zip(items, instances)):
            started[i] = time.monotonic()
            verifier = self.verifiers[instance]
            gate = extract_answer(item.response, require_think=fmt.require_think,
                                  max_response_chars=fmt.max_response_chars, max_answer_chars=fmt.max_answer_chars,
                                  ignored_trailing=fmt.ignored_trailing)
            if not gate.ok:
                results[i] = self._result(item, instance, Score(0.0, gate.reason), False, started[i])
                continue
            if verifier.structured_truth and not isinstance(item.answer, str):
                truth: Any = item.answer
            else:
                read = ground_truth_answer(item.answer, max_answer_chars=fmt.max_answer_chars)
                if not read.ok:
                    results[i] = self._result(item, instance, Score(0.0, BAD_GROUND_TRUTH), True, started[i])
                    continue
                truth = read.answer
            job = (i, instance, (gate.answer, truth))
            if verifier.in_thread:
                in_threads.append(job)
            else:
                timeout = self.config.timeout_s if verifier.sandboxed else self.config.rule_timeout_s
                in_pool.append((i, (instance, gate.answer, truth, item), timeout))

        if in_threads:
            pool = self._thread_pool()
            futures = [(i, instance, pool.submit(self._call, instance, prediction, truth, items[i]))
                       for i, instance, (prediction, truth) in in_threads]
        if in_pool:
            outcomes = self._process_pool().run(in_pool)
            late = {key for key, kind, _, _ in outcomes if kind in ("timeout", "crash")}
            if late:  # once more, each on a fresh worker (the pool replaced every killed or dead one)
                for i in sorted(late):
                    self._stats[instances[i]].retried += 1
                retry = [task for task in in_pool if task[0] in late]
                outcomes = [o for o in outcomes if o[0] not in late] + self._process_pool().run(retry)
            for i, kind, value, elapsed in outcomes:
                instance = instances[i]
                if kind == "ok":
                    try:
                        score = _checked(value)
                    except ValueError as exc:
                        score = self._error(instance, items[i], str(exc))
                elif kind == "timeout":
                    score = Score(0.0, TIMEOUT)
                else:
                    score = self._error(instance, items[i], str(value))
                results[i] = self._result(items[i], instance, score, True, started[i])
        if in_threads:
            submitted = time.monotonic()
            per_instance: dict[str, int] = {}
            for _, instance, _ in futures:
                per_instance[instance] = per_instance.get(instance, 0) + 1
            for i, instance, future in futures:
                bound = _thread_bound(self.verifiers[instance], per_instance[instance])
                try:
                    score = future.result(timeout=max(0.0, submitted + bound - time.monotonic()))
                except FutureTimeout:  # past every HTTP timeout and retry it was given: never wait for ever
                    future.cancel()
                    score = Score(0.0, TIMEOUT)
                results[i] = self._result(items[i], instance, score, True, started[i])

        done = [r for r in results if r is not None]
        assert len(done) == len(items), "every item gets a result"
        for result, item in zip(done, items):
            self._stats[result.verifier].add(result, invoked=result.format_ok and result.reason != BAD_GROUND_TRUTH)
        self._check_rates()
        return done

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per verifier instance: calls, invocations, errors, timeouts, error/timeout rates, mean score, reasons."""
        return {name: s.as_dict() for name, s in sorted(self._stats.items())}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None

    def __enter__(self) -> "RewardSystem":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------------------
    def _call(self, instance: str, prediction: str, truth: Any, item: RewardItem) -> Score:
        try:
            return _checked(self.verifiers[instance].verify(prediction, truth, item))
        except Exception as exc:  # counted and logged as verifier_error: never a silent 0
            return self._error(instance, item, f"{type(exc).__name__}: {exc}")

    def _error(self, instance: str, item: RewardItem, detail: str) -> Score:
        stats = self._stats[instance]
        seen = stats.errors + stats.pending_errors
        if seen < _LOGGED_ERRORS_PER_VERIFIER or seen % 100 == 0:
            log.warning("verifier %s failed on item %s (domain %s): %s", instance, item.id, item.domain,
                        detail.strip()[-2000:])
        stats.pending_errors += 1
        return Score(0.0, VERIFIER_ERROR)

    def _result(self, item: RewardItem, instance: str, score: Score, format_ok: bool, started: float) -> RewardResult:
        return RewardResult(id=item.id, domain=item.domain, verifier=instance, score=float(score.score),
                            reason=score.reason, format_ok=format_ok, elapsed_s=time.monotonic() - started)

    def _process_pool(self) -> KillablePool:
        if self._pool is None:
            self._pool = KillablePool(max(1, self.config.workers), _worker_setup, self.config,
                                      preload=[*self.config.plugins, "math_verify"])
        return self._pool

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            width = max([getattr(v.params, "concurrency", 1) for v in self.verifiers.values() if v.in_thread] or [1])
            self._threads = ThreadPoolExecutor(max_workers=width, thread_name_prefix="reward")
        return self._threads

    def _check_rates(self) -> None:
        c = self.config
        for name, s in self._stats.items():
            s.pending_errors = 0
            if s.invocations < c.min_calls_for_error_rate:
                continue
            if s.errors / s.invocations > c.max_error_rate:
                raise RewardErrorRateExceeded(
                    f"verifier {name!r} failed on {s.errors} of {s.invocations} calls "
                    f"({s.errors / s.invocations:.1%} > rewards.max_error_rate={c.max_error_rate}); "
                    "see the logged tracebacks, fix the verifier or its data", self.stats())
            if s.timeouts / s.invocations > c.max_timeout_rate:
                raise RewardErrorRateExceeded(
                    f"verifier {name!r} timed out on {s.timeouts} of {s.invocations} calls "
                    f"({s.timeouts / s.invocations:.1%} > rewards.max_timeout_rate={c.max_timeout_rate}); "
                    "raise rewards.timeout_s or check the inputs", self.stats())
