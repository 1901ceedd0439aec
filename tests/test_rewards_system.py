"""RewardSystem end to end: routing, order, pool vs in-process, killed hangs, counted verifier errors, the
error-rate failure, config errors, the LLM judge against a loopback server, and `vlmloom reward`."""
from __future__ import annotations

import json
import logging
import sys
import textwrap

import pytest
from loopback_http import LoopbackJsonServer

from vlmloom.schemas.config import ConfigError
from vlmloom.trainer.rewards import (RewardConfig, RewardErrorRateExceeded, RewardItem, RewardSystem,
                                     load_reward_config)
from vlmloom.trainer.rewards.cli import main as reward_main

HANG = "2^{2^{2^{2^{2^{2^{2}}}}}}"  # math-verify's verify() runs for minutes on this


def respond(answer: str) -> str:
    return f"<think>let me see</think><answer><|begin_of_box|>{answer}<|end_of_box|></answer>"


MIXED = [
    RewardItem("m1", "math", respond("\\frac{1}{2}"), "0.5"),
    RewardItem("m2", "math", respond("3"), "4"),
    RewardItem("c1", "chart", respond("2020"), "2019"),
    RewardItem("q1", "choice", respond("Paris"), "B", options=["London", "Paris"]),
    RewardItem("o1", "ocr", respond("helo"), "hello"),
    RewardItem("g1", "grounding", respond("[0,0,100,100]"), [[0, 0, 100, 100]]),
    RewardItem("u1", "gui", respond("type(text='hi')"), "type(text='hi')"),
    RewardItem("t1", "text", respond("yes"), "Yes"),
    RewardItem("f1", "text", "<answer>no think</answer>", "x"),
    RewardItem("f2", "math", respond("1") + respond("2"), "1"),
    RewardItem("b1", "text", respond("x"), "<|begin_of_box|><|end_of_box|>"),
]
EXPECTED = [("m1", 1.0, "correct"), ("m2", 0.0, "wrong_answer"), ("c1", 0.0, "year_mismatch"), ("q1", 1.0, "correct"),
            ("o1", 0.8, "partial_match"), ("g1", 1.0, "correct"), ("u1", 1.0, "correct"), ("t1", 1.0, "correct"),
            ("f1", 0.0, "missing_think"), ("f2", 0.0, "duplicated_tags"), ("b1", 0.0, "bad_ground_truth")]


@pytest.mark.parametrize("workers", [0, 2])
def test_mixed_batch_in_order_in_process_and_in_pool(workers):
    with RewardSystem(RewardConfig(workers=workers, timeout_s=20)) as system:
        results = system.score_batch(MIXED)
        stats = system.stats()
    assert [(r.id, pytest.approx(r.score), r.reason) for r in results] == EXPECTED
    assert [r.verifier for r in results] == ["math", "math", "numeric", "choice", "ocr", "grounding", "gui", "text",
                                             "text", "math", "text"]
    assert [r.format_ok for r in results] == [True] * 8 + [False, False, True]
    assert stats["math"]["calls"] == 3 and stats["math"]["invocations"] == 2
    assert stats["math"]["reasons"] == {"correct": 1, "duplicated_tags": 1, "wrong_answer": 1}
    assert stats["text"]["reasons"] == {"bad_ground_truth": 1, "correct": 1, "missing_think": 1}
    assert all(0.0 <= r.elapsed_s for r in results)


@pytest.mark.parametrize("workers", [0, 2])
def test_hanging_expression_is_killed_scored_minimum_and_counted(workers):
    timeout = 2.0
    items = [RewardItem("hang", "math", respond(HANG), "5"), RewardItem("after", "math", respond("2"), "2"),
             RewardItem("ocr", "ocr", respond("abc"), "abc")]
    with RewardSystem(RewardConfig(workers=workers, timeout_s=timeout)) as system:
        system.score_batch([RewardItem("warm", "math", respond("1"), "1")])  # worker start-up is not the item's time
        hang, after, ocr = system.score_batch(items)
        stats = system.stats()
    assert (hang.score, hang.reason) == (0.0, "timeout")
    assert hang.elapsed_s < 2 * timeout + 5  # late, retried once on a fresh worker, late again: a hang guard
    assert (after.score, after.reason) == (1.0, "correct")  # the killed worker was replaced
    assert (ocr.score, ocr.reason) == (1.0, "correct")
    assert stats["math"]["timeouts"] == 1 and stats["math"]["retried"] == 1 and stats["math"]["errors"] == 0


def test_timeout_rate_threshold_raises():
    config = RewardConfig(workers=0, timeout_s=1, max_timeout_rate=0.4, min_calls_for_error_rate=2)
    with RewardSystem(config) as system, pytest.raises(RewardErrorRateExceeded, match="timed out on 1 of 2"):
        system.score_batch([RewardItem("hang", "math", respond(HANG), "5"), RewardItem("ok", "math", respond("1"), "1")])


PLUGIN = textwrap.dedent('''
    import os
    from vlmloom.trainer.rewards import VERIFIERS, Score, Verifier

    @VERIFIERS.register("test_raises_on_odd")
    class RaisesOnOdd(Verifier):
        def verify(self, prediction, truth, item):
            if int(prediction) % 2:
                raise ZeroDivisionError("odd input")
            return Score(1.0, "correct")

    @VERIFIERS.register("test_out_of_range")
    class OutOfRange(Verifier):
        def verify(self, prediction, truth, item):
            return Score(1.5, "correct")

    @VERIFIERS.register("test_exits")
    class Exits(Verifier):
        def verify(self, prediction, truth, item):
            if prediction == "die":
                os._exit(3)
            return Score(1.0, "correct")
''')


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "vlmloom_test_reward_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    yield "vlmloom_test_reward_plugin"
    sys.path.remove(str(folder))


def plugin_config(plugin, **overrides):
    base = dict(plugins=(plugin,), domains={"odd": "test_raises_on_odd", "range": "test_out_of_range", "exit": "test_exits"},
                max_error_rate=0.5, min_calls_for_error_rate=100)
    return RewardConfig(**{**base, **overrides})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_raising_verifier_is_counted_and_logged_never_a_silent_zero(plugin, workers, caplog):
    items = [RewardItem(str(n), "odd", respond(str(n)), "x") for n in range(6)]
    with caplog.at_level(logging.WARNING, logger="vlmloom.rewards"), \
            RewardSystem(plugin_config(plugin, workers=workers)) as system:
        results = system.score_batch(items + [RewardItem("r", "range", respond("1"), "1")])
        stats = system.stats()
    assert [r.reason for r in results] == ["correct", "verifier_error"] * 3 + ["verifier_error"]
    assert stats["test_raises_on_odd"]["errors"] == 3 and stats["test_raises_on_odd"]["error_rate"] == 0.5
    assert stats["test_out_of_range"]["errors"] == 1
    logged = caplog.text
    assert "ZeroDivisionError" in logged and "odd input" in logged and "score must be in [0, 1]" in logged


def test_error_rate_threshold_raises_after_min_calls(plugin):
    config = plugin_config(plugin, workers=0, max_error_rate=0.3, min_calls_for_error_rate=4)
    with RewardSystem(config) as system:
        system.score_batch([RewardItem("1", "odd", respond("1"), "x"), RewardItem("3", "odd", respond("3"), "x")])
        with pytest.raises(RewardErrorRateExceeded, match="failed on 3 of 4 calls") as raised:
            system.score_batch([RewardItem("2", "odd", respond("2"), "x"), RewardItem("5", "odd", respond("5"), "x")])
    assert raised.value.stats["test_raises_on_odd"]["errors"] == 3


def test_a_worker_that_dies_is_an_error_and_is_replaced(plugin):
    with RewardSystem(plugin_config(plugin, workers=1)) as system:
        results = system.score_batch([RewardItem("a", "exit", respond("die"), "x"),
                                      RewardItem("b", "exit", respond("live"), "x")])
    assert [(r.reason, r.score) for r in results] == [("verifier_error", 0.0), ("correct", 1.0)]


def test_unknown_domain_and_config_errors_say_how_to_fix():
    with RewardSystem(RewardConfig(workers=0)) as system, pytest.raises(KeyError, match="known domains: chart"):
        system.score_batch([RewardItem("a", "poetry", respond("x"), "x")])
    with pytest.raises(ConfigError, match="rel_tol"):
        load_reward_config({"verifiers": {"numeric": {"rel_tl": 0.1}}})
    with pytest.raises(ConfigError, match="unknown type 'nope'.*registered verifiers: choice"):
        load_reward_config({"domains": {"x": "nope"}})
    with pytest.raises(ConfigError, match="llm_judge.base_url is empty"):
        load_reward_config({"domains": {"open": "llm_judge"}})
    with pytest.raises(ConfigError, match="workers"):
        load_reward_config({"workers": -1})
    config = load_reward_config({"rewards": {"domains": {"physics": "loose"}, "verifiers": {"loose": {
        "type": "numeric", "rel_tol": 0.5}}, "workers": 0}})
    with RewardSystem(config) as system:
        loose, strict = system.score_batch([RewardItem("p", "physics", respond("14"), "10"),
                                            RewardItem("c", "chart", respond("14"), "10")])
    assert (loose.verifier, loose.score, strict.verifier, strict.score) == ("loose", 1.0, "numeric", 0.0)


class JudgeServer(LoopbackJsonServer):
    """Chat-completions on 127.0.0.1; the reply depends on the candidate answer (and the attempt)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        super().__init__(self.on_post, lambda path: {"object": "list", "data": [{"id": "judge-model"}]})

    def on_post(self, request: dict, headers: dict):
        self.requests.append(request)
        answer = request["messages"][0]["content"].rsplit("Candidate answer: ", 1)[1]
        n = self.attempts[answer] = self.attempts.get(answer, 0) + 1
        if answer == "flaky" and n == 1:
            return 503, {"error": "busy"}, {}
        if answer == "refused":
            return 400, {"error": "bad request"}, {}
        text = {"right": "score: 1", "half": "Reasoning... score: 0.5", "wrong": "0", "flaky": "score: 1",
                "rambling": "I cannot decide."}[answer]
        return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}, {}


@pytest.fixture
def judge_server():
    server = JudgeServer()
    yield server
    server.close()


def test_llm_judge_against_a_loopback_server(judge_server):
    config = load_reward_config({"domains": {"open": "llm_judge"}, "workers": 0, "min_calls_for_error_rate": 100,
                                 "verifiers": {"llm_judge": {"base_url": judge_server.url, "backoff_seconds": 0,
                                                             "max_retries": 2, "timeout_seconds": 5}}})
    answers = ["right", "half", "wrong", "flaky", "rambling", "refused"]
    items = [RewardItem(a, "open", respond(a), "the reference", meta={"question": "What is it?"}) for a in answers]
    with RewardSystem(config) as system:
        results = system.score_batch(items)
        stats = system.stats()["llm_judge"]
    assert [(r.id, r.score, r.reason) for r in results] == [
        ("right", 1.0, "correct"), ("half", 0.5, "partial_match"), ("wrong", 0.0, "wrong_answer"),
        ("flaky", 1.0, "correct"), ("rambling", 0.0, "verifier_error"), ("refused", 0.0, "verifier_error")]
    assert judge_server.attempts["flaky"] == 2 and judge_server.attempts["refused"] == 1
    assert stats["errors"] == 2
    first = judge_server.requests[0]
    assert first["model"] == "judge-model" and "What is it?" in first["messages"][0]["content"]
    assert "the reference" in first["messages"][0]["content"]


def test_llm_judge_server_down_is_an_error_not_a_zero():
    config = load_reward_config({"domains": {"open": "llm_judge"}, "workers": 0, "min_calls_for_error_rate": 1,
                                 "max_error_rate": 0.5, "verifiers": {"llm_judge": {
                                     "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 1,
                                     "backoff_seconds": 0, "timeout_seconds": 2}}})
    with RewardSystem(config) as system, pytest.raises(RewardErrorRateExceeded, match="llm_judge"):
        system.score_batch([RewardItem("a", "open", respond("x"), "y")])


def test_reward_cli_end_to_end(tmp_path, capsys):
    rows = [
        {"id": "a", "domain": "math", "response": respond("\\frac{1}{2}"), "answer": "0.5"},
        {"id": "b", "domain": "choice", "response": respond("(B)"), "answer": "A", "options": ["x", "y"]},
        {"id": "c", "domain": "grounding", "response": respond("[0,0,10,10]"), "answer": [[0, 0, 10, 10]]},
        {"id": "d", "domain": "poetry", "response": respond("x"), "answer": "x"},
        {"id": "e", "domain": "ocr", "response": "no tags", "answer": "x"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\nnot json\n"
                      + "\n".join(json.dumps(r) for r in rows[3:]) + "\n")
    config = tmp_path / "rewards.yaml"
    config.write_text("rewards:\n  workers: 0\n  timeout_s: 20\n")
    out = tmp_path / "out.jsonl"
    assert reward_main([str(source), "--config", str(config), "--output", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["score"], r["reason"]) for r in written] == [
        ("a", 1.0, "correct"), ("b", 0.0, "wrong_answer"), ("c", 1.0, "correct"), ("line4", 0.0, "bad_input_row"),
        ("d", 0.0, "bad_input_row"), ("e", 0.0, "missing_think")]
    table = capsys.readouterr().out
    assert "(bad rows)          2   0.000  bad_input_row=2" in table
    assert "math                1   1.000  correct=1" in table
    with pytest.raises(ConfigError, match="--overwrite"):
        reward_main([str(source), "--output", str(out)])
    assert not list(tmp_path.glob("out.jsonl.tmp-*"))


def test_vlmloom_dispatcher_has_reward(tmp_path, capsys):
    from vlmloom.cli.main import main

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "t", "domain": "text", "response": respond("Yes"), "answer": "yes"}) + "\n")
    assert main(["reward", str(source), "--set", "workers=0"]) == 0
    assert "text                1   1.000  correct=1" in capsys.readouterr().out


def test_shipped_rewards_yaml_states_the_defaults():
    from vlmloom.trainer.rewards.config import shipped_config_path

    shipped = load_reward_config(shipped_config_path())
    default = RewardConfig()
    assert shipped.routes == default.routes
    assert {n: shipped.instance_params(n) for n in default.routes.values()} == \
        {n: default.instance_params(n) for n in default.routes.values()}
    assert (shipped.format, shipped.timeout_s, shipped.rule_timeout_s, shipped.workers, shipped.max_error_rate,
            shipped.min_calls_for_error_rate, shipped.max_timeout_rate) == \
        (default.format, default.timeout_s, default.rule_timeout_s, default.workers, default.max_error_rate,
         default.min_calls_for_error_rate, default.max_timeout_rate)
