"""The format gate: every reason code, ground truth through the same extractor, hostile inputs; no torch import."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vlmloom.trainer.rewards import extract_answer, extract_box, ground_truth_answer

BOX = "<|begin_of_box|>{}<|end_of_box|>"


def wrap(answer_section: str, think: str = "<think>reasoning</think>") -> str:
    return f"{think}<answer>{answer_section}</answer>"


@pytest.mark.parametrize("response, reason", [
    (None, "not_text"),
    ("<answer>" + BOX.format("4") + "</answer>", "missing_think"),
    ("<think>only thinking</think>", "missing_answer"),
    ("<think>a</think><think>b</think><answer>" + BOX.format("4") + "</answer>", "duplicated_tags"),
    ("<think>a</think><answer>x</answer><answer>" + BOX.format("4") + "</answer>", "duplicated_tags"),
    ("<think>a <answer>" + BOX.format("4") + "</answer></think>", "nested_tags"),
    ("<answer><think>a</think>" + BOX.format("4") + "</answer>", "nested_tags"),
    ("<answer>" + BOX.format("4") + "</answer><think>a</think>", "misordered_tags"),
    ("</think>a<think><answer>" + BOX.format("4") + "</answer>", "misordered_tags"),
    ("Sure! <think>a</think><answer>" + BOX.format("4") + "</answer>", "text_before_think"),
    ("<think>a</think> so <answer>" + BOX.format("4") + "</answer>", "text_between_think_and_answer"),
    (wrap(BOX.format("4")) + " and more", "text_after_answer"),
    (wrap(r"The answer is \boxed{4}."), "boxed_instead_of_box"),
    (wrap("The answer is 4."), "missing_box"),
    (wrap(BOX.format("4") + " or " + BOX.format("5")), "multiple_boxes"),
    (wrap("<|begin_of_box|>4"), "unbalanced_box"),
    (wrap("<|end_of_box|>4<|begin_of_box|>"), "unbalanced_box"),
    (wrap(BOX.format("   ")), "empty_box"),
    (wrap(BOX.format("4\x00")), "control_characters"),
    (wrap(BOX.format("4")) + "\x1b[31m", "control_characters"),
])
def test_gate_failure_reasons(response, reason):
    result = extract_answer(response)
    assert (result.ok, result.answer, result.reason) == (False, None, reason)


def test_gate_reads_only_the_box_and_ignores_drafts_in_thinking():
    response = ("<think>maybe <|begin_of_box|>3<|end_of_box|>? no.</think>\n"
                "<answer>So the result is <|begin_of_box|> \\frac{1}{2} <|end_of_box|>.</answer>")
    result = extract_answer(response)
    assert (result.ok, result.answer, result.reason) == (True, "\\frac{1}{2}", "ok")


def test_gate_allows_end_of_turn_tokens_and_optional_think():
    assert extract_answer(wrap(BOX.format("7")) + "<|user|>\n<|endoftext|>").answer == "7"
    assert extract_answer("<answer>" + BOX.format("7") + "</answer>", require_think=False).answer == "7"
    assert extract_answer("<answer>" + BOX.format("7") + "</answer>").reason == "missing_think"


def test_gate_caps_lengths_before_parsing():
    huge = wrap(BOX.format("9" * 1_000_000))  # a 1 MB answer
    assert extract_answer(huge).reason == "response_too_long"
    assert extract_answer(huge, max_response_chars=2_000_000).reason == "answer_too_long"
    assert extract_answer(wrap(BOX.format("9" * 50)), max_answer_chars=49).reason == "answer_too_long"


def test_gate_on_deeply_nested_tags_is_scored_not_crashed():
    deep = "<think>" * 20_000 + "x" + "</think>" * 20_000 + "<answer>" + BOX.format("1") + "</answer>"
    assert extract_answer(deep).reason == "duplicated_tags"
    braces = wrap(BOX.format("{" * 100_000 + "}" * 100_000))
    assert extract_answer(braces).reason == "answer_too_long"


def test_ground_truth_goes_through_the_same_box_rules():
    assert ground_truth_answer("42").answer == "42"
    assert ground_truth_answer(" Paris ").answer == "Paris"
    assert ground_truth_answer(BOX.format("42")).answer == "42"
    assert ground_truth_answer(wrap(BOX.format("42"))).answer == "42"
    assert ground_truth_answer(BOX.format("1") + BOX.format("2")).reason == "multiple_boxes"
    assert ground_truth_answer("").reason == "empty_box"
    assert ground_truth_answer(["not", "text"]).reason == "not_text"
    assert extract_box("no box here").reason == "missing_box"


def test_rewards_package_imports_no_torch_or_deepspeed():
    code = ("import sys; import vlmloom.trainer.rewards, vlmloom.trainer.rewards.cli; "
            "bad = [m for m in ('torch', 'deepspeed', 'transformers', 'apache_beam') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
