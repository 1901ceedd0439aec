"""The shared chat-completions client against a scripted loopback server: backoff and Retry-After, the
before-attempt hook, which failures retry, content parts, /models, the bearer token; and it imports no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest
from loopback_http import LoopbackJsonServer

from vlmloom.curation.chat_client import ChatClientError, ChatCompletionsClient, api_key_from_env
from vlmloom.schemas.config import ConfigError


class ScriptedServer(LoopbackJsonServer):
    """Answers the n-th POST with script[n] = (status, payload, headers); GET /models lists two models."""

    def __init__(self):
        self.script: list[tuple[int, dict, dict]] = []
        self.requests: list[tuple[dict, str | None]] = []  # (body, Authorization header)
        super().__init__(self.on_post, lambda path: {"object": "list", "data": [{"id": "served-model"}, {"id": "x"}]})

    def on_post(self, body: dict, headers: dict):
        self.requests.append((body, headers.get("Authorization")))
        return self.script[len(self.requests) - 1]


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def reply(content) -> tuple[int, dict, dict]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}, {}


def client(server: ScriptedServer, sleeps: list[float], hook_calls: list[int] | None = None, api_key=None,
           max_retries: int = 3, backoff_seconds: float = 0.1) -> ChatCompletionsClient:
    hook = (lambda: hook_calls.append(len(server.requests))) if hook_calls is not None else None
    return ChatCompletionsClient(server.url + "/", api_key, timeout_seconds=5, max_retries=max_retries,
                                 backoff_seconds=backoff_seconds, sleep=sleeps.append, before_attempt=hook)


def test_retries_back_off_and_honour_a_larger_retry_after(server):
    server.script = [(429, {"error": "slow down"}, {"Retry-After": "5"}), (503, {"error": "busy"}, {}),
                     reply([{"type": "text", "text": "a "}, {"type": "image"}, {"type": "text", "text": "b"}])]
    sleeps: list[float] = []
    hook_calls: list[int] = []
    result = client(server, sleeps, hook_calls).complete({"model": "m", "messages": []})
    assert (result.text, result.attempts) == ("a b", 3)
    assert sleeps == [5.0, 0.2]  # Retry-After 5 beats 0.1; then 0.1 doubled
    assert hook_calls == [0, 1, 2]  # once before every request
    assert server.requests[0][0] == {"model": "m", "messages": []}


def test_other_4xx_and_replies_without_content_fail_at_once(server):
    server.script = [(400, {"error": "bad request"}, {}), (200, {"choices": []}, {})]
    sleeps: list[float] = []
    for expected in ("HTTP 400: ", r"response without choices\[0\]\.message\.content"):
        with pytest.raises(ChatClientError, match=expected) as caught:
            client(server, sleeps).complete({})
        assert (caught.value.retryable, caught.value.attempts) == (False, 1)
    assert len(server.requests) == 2 and sleeps == []


def test_gives_up_after_the_retries(server):
    server.script = [(503, {"error": "busy"}, {}), (502, {"error": "gateway"}, {})]
    sleeps: list[float] = []
    with pytest.raises(ChatClientError, match="gave up after 2 attempts: HTTP 502") as caught:
        client(server, sleeps, max_retries=1, backoff_seconds=0).complete({})
    assert (caught.value.retryable, caught.value.attempts) == (True, 2)
    assert sleeps == [0]


def test_unreachable_server_is_retryable_then_gives_up():
    sleeps: list[float] = []
    unreachable = ChatCompletionsClient("http://127.0.0.1:9/v1", timeout_seconds=2, max_retries=1,
                                        backoff_seconds=0, sleep=sleeps.append)
    with pytest.raises(ChatClientError, match="gave up after 2 attempts: connection error") as caught:
        unreachable.complete({})
    assert caught.value.retryable and sleeps == [0]
    with pytest.raises(ChatClientError, match="/models failed"):
        unreachable.first_model()


def test_first_model_and_bearer_token(server):
    server.script = [reply(None)]
    authorised = client(server, [], api_key="secret")
    assert authorised.first_model() == "served-model"
    assert authorised.complete({}).text == ""
    assert server.requests[0][1] == "Bearer secret"


def test_api_key_from_env(monkeypatch):
    monkeypatch.setenv("VLMLOOM_TEST_TOKEN", "secret")
    monkeypatch.delenv("VLMLOOM_TEST_UNSET", raising=False)
    assert api_key_from_env("VLMLOOM_TEST_TOKEN", "judge.api_key_env") == "secret"
    assert api_key_from_env("", "judge.api_key_env") is None
    with pytest.raises(ConfigError, match="judge.api_key_env=VLMLOOM_TEST_UNSET but that variable is not set"):
        api_key_from_env("VLMLOOM_TEST_UNSET", "judge.api_key_env")


def test_importing_the_client_loads_no_torch_or_beam():
    code = ("import sys, vlmloom.curation.chat_client; "
            "print([m for m in ('torch', 'apache_beam', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
