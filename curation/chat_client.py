"""One client for OpenAI-compatible `/chat/completions` servers (vLLM, SGLang, hosted APIs), stdlib HTTP only.

Request body (a dict) → `ChatReply(text, attempts)`, the text being `choices[0].message.content` (content-part
lists are joined). Each request has a timeout; 429, 5xx, timeouts, connection errors and unreadable JSON are
retried with exponential backoff (`backoff_seconds`, doubled per retry; a larger `Retry-After` wins). Other
failures (4xx, a reply without content) raise `ChatClientError(retryable=False)` at once; retryable ones raise
`ChatClientError(retryable=True)` once `max_retries` retries are spent. Used by the recaptioner
(curation/recaption.py) and the `llm_judge` reward verifier (trainer/rewards/judge.py), so it imports neither
torch nor Beam: the reward package must stay light enough for verifier worker processes.
"""
from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from vlmloom.schemas.config import ConfigError


class ChatClientError(Exception):
    """A request that failed for good; `retryable` says whether retries were spent or would not have helped."""

    def __init__(self, message: str, *, retryable: bool, attempts: int = 1, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.attempts = attempts
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After), if any


@dataclass(frozen=True)
class ChatReply:
    text: str
    attempts: int  # requests sent, 1 = no retry


class ChatCompletionsClient:
    """Thread-safe: holds no per-request state, so one client serves a whole thread pool."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_seconds: float, max_retries: int,
                 backoff_seconds: float, sleep: Callable[[float], None] = time.sleep,
                 before_attempt: Callable[[], None] | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep
        self._before_attempt = before_attempt  # e.g. a rate limiter; runs after the backoff, before each request
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def first_model(self) -> str:
        """The first model the server lists under /models (servers that host one model need no name)."""
        request = urllib.request.Request(self.base_url + "/models", headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return str(json.loads(response.read())["data"][0]["id"])
        except Exception as exc:
            raise ChatClientError(f"{self.base_url}/models failed ({exc})", retryable=False) from exc

    def complete(self, body: dict[str, Any]) -> ChatReply:
        data = json.dumps(body).encode("utf-8")
        last: ChatClientError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                if last is not None and last.retry_after:
                    delay = max(delay, last.retry_after)
                self._sleep(delay)
            if self._before_attempt is not None:
                self._before_attempt()
            try:
                return ChatReply(self._post(data), attempts=attempt + 1)
            except ChatClientError as exc:
                exc.attempts = attempt + 1
                if not exc.retryable:
                    raise
                last = exc
        raise ChatClientError(f"gave up after {self.max_retries + 1} attempts: {last}", retryable=True,
                              attempts=self.max_retries + 1)

    def _post(self, data: bytes) -> str:
        request = urllib.request.Request(self.base_url + "/chat/completions", data=data, headers=self._headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300].decode("utf-8", "replace")
            # 429 and 5xx are the server being busy or restarting; any other 4xx would fail again the same way
            retryable = exc.code == 429 or exc.code >= 500
            retry_after = _seconds(exc.headers.get("Retry-After") if exc.headers else None)
            raise ChatClientError(f"HTTP {exc.code}: {text}", retryable=retryable, retry_after=retry_after) from None
        except (TimeoutError, socket.timeout) as exc:
            raise ChatClientError(f"timeout after {self.timeout_seconds}s", retryable=True) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):  # a connect timeout arrives wrapped
                raise ChatClientError(f"timeout after {self.timeout_seconds}s", retryable=True) from exc
            raise ChatClientError(f"connection error: {exc.reason}", retryable=True) from exc
        except (ConnectionError, json.JSONDecodeError) as exc:
            raise ChatClientError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ChatClientError(f"response without choices[0].message.content: {str(payload)[:200]}",
                                  retryable=False) from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content or "")


def api_key_from_env(variable: str, setting: str) -> str | None:
    """The bearer token held in environment `variable` ("" = no token); `setting` names the config field for the
    fix-it message, so a forgotten export fails at start-up rather than as 401s on every request."""
    if not variable:
        return None
    token = os.environ.get(variable)
    if not token:
        raise ConfigError(f"{setting}={variable} but that variable is not set: export it or clear {setting}")
    return token


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds; the HTTP-date form is ignored (the exponential backoff still applies)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None
