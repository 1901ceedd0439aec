"""The `llm_judge` verifier: an OpenAI-compatible `/chat/completions` server grades answers no rule can judge.

The judge sees the question (`item.meta["question"]`, optional), the reference answer and the model's answer
(read from the box), and must reply with a line `score: X`, X in [0, 1] (a bare number is accepted too).
Requests use stdlib HTTP with a per-request timeout; 429, 5xx, timeouts and connection errors are retried with
exponential backoff (honouring `Retry-After`), as the recaptioner does (curation/recaption.py). A judge that
still fails, or replies without a score, raises `VerifierError`: the reward system counts it as
`verifier_error` and fails the run past `max_error_rate` — a dead judge never turns into silent zeros.
Runs on threads of the calling process (`in_thread`), `concurrency` requests at a time.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

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


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


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
        self._sleep = sleep
        self._url = p.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if p.api_key_env:
            token = os.environ.get(p.api_key_env)
            if not token:
                raise ConfigError(f"llm_judge.api_key_env={p.api_key_env} but that variable is not set")
            self._headers["Authorization"] = f"Bearer {token}"
        self._model = p.model

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        p = self.params
        if not self._model:
            self._model = self._first_model()
        question = str((item.meta or {}).get("question", ""))[: p.max_answer_chars]
        content = p.prompt.format(question=question, reference=str(truth)[: p.max_answer_chars],
                                  answer=prediction[: p.max_answer_chars])
        body = json.dumps({"model": self._model, "messages": [{"role": "user", "content": content}],
                           "max_tokens": p.max_tokens, "temperature": 0.0}).encode("utf-8")
        reply = self._request(body)
        score = parse_judge_score(reply)
        if score is None:
            raise VerifierError(f"judge reply has no score in [0, 1]: {reply[:200]!r}")
        return Score(score, CORRECT if score == 1.0 else ("partial_match" if score > 0 else WRONG))

    def _first_model(self) -> str:
        request = urllib.request.Request(self.params.base_url.rstrip("/") + "/models", headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.params.timeout_seconds) as response:
                return str(json.loads(response.read())["data"][0]["id"])
        except Exception as exc:
            raise VerifierError(f"llm_judge.model is empty and {self.params.base_url}/models failed ({exc}): "
                                "set llm_judge.model") from exc

    def _request(self, body: bytes) -> str:
        p = self.params
        last: Exception | None = None
        for attempt in range(p.max_retries + 1):
            if attempt:
                delay = p.backoff_seconds * 2 ** (attempt - 1)
                if isinstance(last, _Retryable) and last.retry_after:
                    delay = max(delay, last.retry_after)
                self._sleep(delay)
            try:
                return self._post(body)
            except _Retryable as exc:
                last = exc
        raise VerifierError(f"judge gave up after {p.max_retries + 1} attempts: {last}")

    def _post(self, body: bytes) -> str:
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.params.timeout_seconds) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300].decode("utf-8", "replace")
            if exc.code == 429 or exc.code >= 500:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                raise _Retryable(f"HTTP {exc.code}: {text}", _seconds(retry_after)) from None
            raise VerifierError(f"HTTP {exc.code}: {text}") from None
        except (TimeoutError, socket.timeout) as exc:
            raise _Retryable(f"timeout after {self.params.timeout_seconds}s") from exc
        except urllib.error.URLError as exc:
            raise _Retryable(f"connection error: {exc.reason}") from exc
        except (ConnectionError, json.JSONDecodeError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise VerifierError(f"response without choices[0].message.content: {str(payload)[:200]}") from None
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content or "")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
