"""The `llm_judge` verifier: an OpenAI-compatible `/chat/completions` server grades answers no rule can judge.

The judge sees the question (`item.meta["question"]`, optional), the reference answer and the model's answer
(read from the box), and must reply with a line `score: X`, X in [0, 1] (a bare number is accepted too).
Requests go through `ChatCompletionsClient` (curation/chat_client.py, shared with the recaptioner): a timeout
each; 429, 5xx, timeouts and connection errors retried with exponential backoff (honouring `Retry-After`).
A judge that still fails, or replies without a score, raises `VerifierError`: the reward system counts it as
`verifier_error` and fails the run past `max_error_rate` — a dead judge never turns into silent zeros.
Runs on threads of the calling process (`in_thread`), `concurrency` requests at a time.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from vlmloom.curation.chat_client import ChatClientError, ChatCompletionsClient, api_key_from_env
from vlmloom.schemas.config import ConfigError
from vlmloom.trainer.rewards.base import CORRECT, WRONG, RewardItem, Score, Verifier, VerifierError, VERIFIERS

DEFAULT_JUDGE_PROMPT = (
    "You grade answers. Compare the candidate answer with the reference answer for the question and decide "
    "whether the candidate is correct. Reply with one line `score: 1` if it is correct, `score: 0` if not "
    "(a fraction in between for partially correct answers).\n\n"
    "Question: {question}\nReference answer: {reference}\nCandidate answer: {answer}")
_SCORE = re.compile(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.I)
_BARE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True, kw_only=True)
class JudgeParams:
    base_url: str = ""  # server root incl. /v1, e.g. http://localhost:8000/v1 (required)
    model: str = ""  # served model name; "" = the first of the server's /models
    api_key_env: str = ""  # environment variable with the bearer token; "" = no Authorization header
    prompt: str = DEFAULT_JUDGE_PROMPT  # {question}, {reference}, {answer} are filled in
    max_tokens: int = 64  # reply length limit
    timeout_seconds: float = 30.0  # per request
    max_retries: int = 3  # after the first attempt, on 429/5xx/timeouts/connection errors
    backoff_seconds: float = 1.0  # first backoff, doubled per retry (Retry-After wins when larger)
    concurrency: int = 8  # requests in flight
    max_answer_chars: int = 4000  # longer answers are cut before they are sent

    def validate(self) -> None:
        if not self.base_url:
            raise ConfigError("llm_judge.base_url is empty: set it to an OpenAI-compatible server root, "
                              "e.g. http://localhost:8000/v1")
        if self.timeout_seconds <= 0 or self.max_retries < 0 or self.backoff_seconds < 0 or self.concurrency < 1:
            raise ConfigError("llm_judge: timeout_seconds > 0, max_retries >= 0, backoff_seconds >= 0 and "
                              "concurrency >= 1 are required")


def parse_judge_score(reply: str) -> float | None:
    match = _SCORE.search(reply) or _BARE.match(reply)
    if not match:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= 1.0 else None


@VERIFIERS.register("llm_judge")
class LlmJudgeVerifier(Verifier):
    Params = JudgeParams
    in_thread = True

    def __init__(self, params: Any = None, sleep: Any = time.sleep):
        super().__init__(params)
        p = self.params
        api_key = api_key_from_env(p.api_key_env, "llm_judge.api_key_env")
        self._client = ChatCompletionsClient(p.base_url, api_key, timeout_seconds=p.timeout_seconds,
                                             max_retries=p.max_retries, backoff_seconds=p.backoff_seconds, sleep=sleep)
        self._model = p.model

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        p = self.params
        if not self._model:
            self._model = self._first_model()
        question = str((item.meta or {}).get("question", ""))[: p.max_answer_chars]
        content = p.prompt.format(question=question, reference=str(truth)[: p.max_answer_chars],
                                  answer=prediction[: p.max_answer_chars])
        body = {"model": self._model, "messages": [{"role": "user", "content": content}],
                "max_tokens": p.max_tokens, "temperature": 0.0}
        try:
            reply = self._client.complete(body).text
        except ChatClientError as exc:  # a dead judge is a verifier error, never a silent zero
            raise VerifierError(f"judge {exc}") from exc
        score = parse_judge_score(reply)
        if score is None:
            raise VerifierError(f"judge reply has no score in [0, 1]: {reply[:200]!r}")
        return Score(score, CORRECT if score == 1.0 else ("partial_match" if score > 0 else WRONG))

    def _first_model(self) -> str:
        try:
            return self._client.first_model()
        except ChatClientError as exc:
            raise VerifierError(f"llm_judge.model is empty and {exc}: set llm_judge.model") from exc
