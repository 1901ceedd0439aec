"""Records and the verifier contract: `RewardItem` in, `RewardResult` out; verifiers behind `VERIFIERS`.

A verifier is a small class registered by name:

    @VERIFIERS.register("text")
    class TextVerifier(Verifier):
        Params = TextParams                        # frozen dataclass of its knobs (built from YAML, fix-it errors)
        def verify(self, prediction, truth, item) -> Score: ...

`prediction` is the answer the format gate read from the response's box (a capped string), `truth` the ground
truth (a string after the same gate, or the structured value for grounding). A verifier returns a `Score`
(value in [0, 1] and a snake_case reason). It raises on a bug; it never hides one as a 0: the reward system
counts the raise as `verifier_error` and fails the run past `max_error_rate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from vlmloom.schemas.registry import Registry


@dataclass(frozen=True)
class RewardItem:
    id: str  # caller's key, echoed in the result
    domain: str  # routes to a verifier via RewardConfig.domains (math, chart, choice, ocr, grounding, gui, text, …)
    response: str  # the full model output, tags included
    answer: Any  # ground truth: a string (box tokens allowed); grounding: a list of [x1, y1, x2, y2] boxes too
    options: list[str] | None = None  # choice: option texts, lettered A, B, C…
    meta: dict[str, Any] | None = None  # free-form (e.g. `question` for the LLM judge)


@dataclass(frozen=True)
class RewardResult:
    id: str
    domain: str
    verifier: str  # verifier instance name that scored it ("" when the format gate decided)
    score: float  # in [0, 1]
    reason: str  # snake_case: ok/partial codes of the verifier, a format-gate code, timeout, verifier_error
    format_ok: bool  # the response passed the format gate
    elapsed_s: float  # wall time spent on this item (gate + verifier, incl. queueing in the pool)


class Score(NamedTuple):
    score: float
    reason: str


# Reasons every verifier shares.
CORRECT = "correct"
WRONG = "wrong_answer"
TIMEOUT = "timeout"
VERIFIER_ERROR = "verifier_error"
BAD_GROUND_TRUTH = "bad_ground_truth"


class VerifierError(Exception):
    """A verifier could not judge (a judge server down after retries, an unreadable reply): counted as an error."""


@dataclass(frozen=True, kw_only=True)
class NoParams:
    pass


class Verifier:
    """Base class; subclasses set `Params` and implement `verify`."""

    Params: ClassVar[type] = NoParams
    sandboxed: ClassVar[bool] = False  # True: always runs in a killable worker process (symbolic maths)
    in_thread: ClassVar[bool] = False  # True: I/O-bound, runs on threads of the calling process (LLM judge)
    structured_truth: ClassVar[bool] = False  # True: the ground truth may be a list/dict, not only a string

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        raise NotImplementedError


VERIFIERS: Registry[type[Verifier]] = Registry("verifier")


@dataclass
class VerifierStats:
    calls: int = 0  # items routed to this verifier
    invocations: int = 0  # items that passed the format gate and reached the verifier (error-rate denominator)
    errors: int = 0
    timeouts: int = 0  # items scored `timeout` (late twice)
    retried: int = 0  # items that were late (or whose worker died) once and were tried again on a fresh worker
    score_sum: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    pending_errors: int = 0  # errors seen in the batch being scored (for log throttling only)

    def add(self, result: RewardResult, invoked: bool) -> None:
        self.calls += 1
        self.invocations += invoked
        self.score_sum += result.score
        self.errors += result.reason == VERIFIER_ERROR
        self.timeouts += result.reason == TIMEOUT
        self.reasons[result.reason] = self.reasons.get(result.reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "invocations": self.invocations, "errors": self.errors,
                "timeouts": self.timeouts, "retried": self.retried,
                "error_rate": self.errors / self.invocations if self.invocations else 0.0,
                "timeout_rate": self.timeouts / self.invocations if self.invocations else 0.0,
                "mean_score": self.score_sum / self.calls if self.calls else 0.0,
                "reasons": dict(sorted(self.reasons.items()))}
