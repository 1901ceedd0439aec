"""Every verifier on its hard cases, called directly (in-process); the slow DP references for edit distance/LCS."""
from __future__ import annotations

import random

import pytest

from vlmloom.trainer.rewards import VERIFIERS, RewardItem
from vlmloom.trainer.rewards.boxes import iou, max_matching
from vlmloom.trainer.rewards.gui import ActionSyntaxError, parse_action
from vlmloom.trainer.rewards.numbers import parse_quantity
from vlmloom.trainer.rewards.text import lcs_length, levenshtein


def verify(name: str, prediction: str, truth, options=None, **params):
    cls = VERIFIERS.get(name)
    verifier = cls(cls.Params(**params))
    return tuple(verifier.verify(prediction, truth, RewardItem(id="x", domain=name, response="", answer=truth,
                                                               options=options)))


@pytest.mark.parametrize("prediction, truth, expected", [
    ("1/2", "0.5", (1.0, "correct")),
    ("\\frac{1}{2}", "0.5", (1.0, "correct")),
    ("\\dfrac{1}{2}", "\\frac12", (1.0, "correct")),
    ("\\sqrt{2}", "\\sqrt 2", (1.0, "correct")),
    ("\\sqrt{2}", "1.5", (0.0, "wrong_answer")),
    ("[1,2)", "[1, 2)", (1.0, "correct")),
    ("(1,2]", "[1,2]", (0.0, "wrong_answer")),
    ("\\{1,2\\}", "\\{2,1\\}", (1.0, "correct")),
    ("\\{1,3\\}", "\\{2,1\\}", (0.0, "wrong_answer")),
    ("x^2+2x+1", "(x+1)^2", (1.0, "correct")),
    ("x=2", "2", (1.0, "correct")),
    ("50\\%", "0.5", (1.0, "correct")),
    ("3 cm", "3", (0.0, "unexpected_variable")),  # issue 21: a unit only when declared (`units`), below
    ("1.5e3", "1500", (1.0, "correct")),  # math-verify reads 1.5e3 as 1.5·e·3: the numeric check catches it
    ("3.2\\times10^{5}", "320000", (1.0, "correct")),
    ("0.333", "1/3", (0.0, "wrong_answer")),
    ("2019", "2019", (1.0, "correct")),
    ("2", "3", (0.0, "wrong_answer")),
])
def test_math(prediction, truth, expected):
    assert verify("math", prediction, truth) == expected


def test_math_refuses_oversize_answers_before_parsing():
    assert verify("math", "1+" * 600 + "1", "1201") == (0.0, "answer_too_long")


@pytest.mark.parametrize("text, value, percent, unit, bare", [
    ("1/2", 0.5, False, "", False), ("\\frac{3}{4}", 0.75, False, "", False), ("50%", 50.0, True, "", False),
    ("45 percent", 45.0, True, "", False), ("3 cm", 3.0, False, "cm", False), ("1,234.5", 1234.5, False, "", False),
    ("1{,}234", 1234.0, False, "", False), ("3.2e5", 320000.0, False, "", False),
    ("3.2 × 10^5", 320000.0, False, "", False), ("−3", -3.0, False, "", True), ("$1,200", 1200.0, False, "", False),
    ("2019", 2019.0, False, "", True), ("2019.4", 2019.4, False, "", False), ("$5$", 5.0, False, "", True),
])
def test_parse_quantity(text, value, percent, unit, bare):
    q = parse_quantity(text)
    assert (float(q.value), q.percent, q.unit, q.bare_integer) == (pytest.approx(value), percent, unit, bare)


@pytest.mark.parametrize("text", ["abc", "x=2", "1e999", "1/0", "1" * 300, "2^{2^{2}}"])
def test_parse_quantity_refuses(text):
    assert parse_quantity(text) is None


@pytest.mark.parametrize("prediction, truth, expected", [
    ("10.1", "10", (1.0, "correct")),  # within 2 %
    ("10.3", "10", (0.0, "wrong_answer")),
    ("2019", "2019", (1.0, "correct")),
    ("2019.4", "2019", (1.0, "correct")),  # issue 21: the year rule needs integers on both sides
    ("2020", "2019", (0.0, "year_mismatch")),  # 0.05 % off, but years are exact
    ("2,019", "2019", (1.0, "correct")),
    ("2019.0", "2019", (1.0, "correct")),
    ("20.19", "20.2", (1.0, "correct")),  # not a year: tolerance applies
    ("50%", "0.5", (1.0, "correct")),
    ("50%", "50", (1.0, "correct")),
    ("0.5", "50%", (1.0, "correct")),
    ("50", "0.5", (0.0, "wrong_answer")),
    ("0.5%", "50%", (0.0, "wrong_answer")),
    ("3 cm", "3", (1.0, "correct")),
    ("3 cm", "3 kg", (0.0, "unit_mismatch")),
    ("1,234,567", "1234567", (1.0, "correct")),
    ("1.23e6", "1,230,000", (1.0, "correct")),
    ("$1,200", "1200", (1.0, "correct")),
    ("0", "0", (1.0, "correct")),
    ("0.001", "0", (0.0, "wrong_answer")),
    ("about ten", "10", (0.0, "unparseable_number")),
    ("asia", "Asia", (1.0, "correct")),  # a text answer on a chart: normalised exact
])
def test_numeric(prediction, truth, expected):
    assert verify("numeric", prediction, truth) == expected


OPTIONS = ["London", "Paris", "Berlin", "Rome"]


@pytest.mark.parametrize("prediction, truth, expected", [
    ("B", "B", (1.0, "correct")),
    ("(B)", "B", (1.0, "correct")),
    ("b.", "B", (1.0, "correct")),
    ("Option B", "B", (1.0, "correct")),
    ("The answer is B", "B", (1.0, "correct")),
    ("Paris", "B", (1.0, "correct")),  # option text for the letter
    ("paris.", "B", (1.0, "correct")),
    ("B. Paris", "B", (1.0, "correct")),
    ("B. Berlin", "B", (0.0, "ambiguous_choice")),  # letter of one option, text of another
    ("C", "B", (0.0, "wrong_answer")),
    ("Berlin", "B", (0.0, "wrong_answer")),
    ("E", "B", (0.0, "invalid_option")),
    ("I think it is the capital", "B", (0.0, "unparseable_choice")),
    ("B", "Paris", (1.0, "correct")),  # truth given as option text
    ("A, C", "AC", (1.0, "correct")),
    ("CA", "A and C", (1.0, "correct")),
    ("A", "AC", (0.0, "wrong_answer")),
])
def test_choice(prediction, truth, expected):
    assert verify("choice", prediction, truth, options=OPTIONS) == expected


def test_choice_without_options_compares_letters_or_text():
    assert verify("choice", "(c)", "C") == (1.0, "correct")
    assert verify("choice", "yes", "Yes.") == (1.0, "correct")


def test_ocr_partial_credit_is_one_minus_edit_distance_over_max_length():
    assert verify("ocr", "hello world", "hello world") == (1.0, "correct")
    assert verify("ocr", "helo world", "hello world") == (pytest.approx(1 - 1 / 11), "partial_match")
    assert verify("ocr", "hello", "hello world") == (pytest.approx(5 / 11), "partial_match")
    assert verify("ocr", "xyz", "abc") == (0.0, "wrong_answer")
    assert verify("ocr", "Hello  \n World", "hello world") == (pytest.approx(1 - 2 / 11), "partial_match")
    assert verify("ocr", "Hello World", "hello world", case_sensitive=False) == (1.0, "correct")


def _slow_levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[:], i
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
    return row[-1]


def _slow_lcs(a: str, b: str) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_bit_parallel_edit_distance_and_lcs_match_the_dynamic_programme():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abcé") for _ in range(rng.randint(0, 70)))  # > 64: crosses a machine word
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 70)))
        assert levenshtein(a, b) == _slow_levenshtein(a, b)
        assert lcs_length(a, b) == _slow_lcs(a, b)


TRUTH = [[100, 100, 300, 300], [500, 500, 700, 700]]


@pytest.mark.parametrize("prediction, truth, expected", [
    ("[100,100,300,300], [500,500,700,700]", TRUTH, (1.0, "correct")),
    ("[[500, 500, 700, 700], [100, 100, 300, 300]]", TRUTH, (1.0, "correct")),  # order free
    ("[100,100,300,300]", TRUTH, (0.5, "partial_match")),
    ("[100,100,300,300] [100,100,300,300]", TRUTH, (0.5, "partial_match")),  # one-to-one: no double use
    ("[100,100,300,300] [0,0,10,10] [900,900,950,950]", [[100, 100, 300, 300]], (pytest.approx(1 / 3), "partial_match")),
    ("[300,100,500,300]", [[100, 100, 300, 300]], (0.0, "no_match")),  # touching edge: IoU 0
    ("the box", TRUTH, (0.0, "no_boxes")),
    ("[100,100,1001,300]", TRUTH, (0.0, "box_out_of_range")),
    ("[-5,100,300,300]", TRUTH, (0.0, "box_out_of_range")),
    ("[100,100,100,300]", TRUTH, (0.0, "degenerate_box")),
    ("[300,300,100,100]", TRUTH, (0.0, "degenerate_box")),
    ("[100,100,300,300]", [[100, 100, 300, 300]], (1.0, "correct")),
    ("[100,100,300,300]", "[100,100,300,300]", (1.0, "correct")),
    ("[100,100,300,300]", [100, 100, 300, 300], (1.0, "correct")),
    ("[100,100,300,300]", [[100, 100, 2000, 300]], (0.0, "bad_ground_truth")),
    ("[100,100,300,300]" * 101, TRUTH, (0.0, "too_many_boxes")),
])
def test_grounding(prediction, truth, expected):
    assert verify("grounding", prediction, truth) == expected


def test_iou_threshold_is_strict():
    a, b = (0, 0, 100, 100), (0, 0, 100, 50)
    assert iou(a, b) == 0.5
    assert max_matching([a], [b], 0.5) == 0  # exactly τ does not match
    assert max_matching([a], [b], 0.49) == 1
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_max_matching_finds_the_optimum_where_greedy_fails():
    # predicted 0 overlaps both truths most with truth 0; only the assignment 0→1, 1→0 matches both
    truth = [(0, 0, 100, 100), (40, 0, 140, 100)]
    predicted = [(20, 0, 120, 100), (0, 0, 90, 100)]
    assert max_matching(predicted, truth, 0.5) == 2


@pytest.mark.parametrize("prediction, truth, expected", [
    ("click(point=[150,60])", "click(box=[120,40,180,80])", (1.0, "correct")),
    ("click(point=[120,40])", "click(box=[120,40,180,80])", (1.0, "correct")),  # on the edge
    ("click(point=[181,60])", "click(box=[120,40,180,80])", (0.0, "wrong_arguments")),
    ("click(box=[120,40,180,80])", "click(box=[120,40,180,80])", (1.0, "correct")),
    ("click(box=[0,0,60,40])", "click(box=[120,40,180,80])", (0.0, "wrong_arguments")),
    ("click(point=[100,100])", "click(point=[110,110])", (1.0, "correct")),  # within 20 units
    ("double_click(point=[150,60])", "click(box=[120,40,180,80])", (0.0, "wrong_action_type")),
    ("type(text='hello world')", "type(text='hello world')", (1.0, "correct")),
    ("type(text=\"hello wrld\")", "type(text='hello world')", (pytest.approx(20 / 21), "partial_match")),
    ("press(key='Enter')", "press(key='enter')", (1.0, "correct")),
    ("scroll(direction='down', amount=3)", "scroll(direction='down', amount=5)", (0.5, "partial_match")),
    ("drag(start_point=[15,15], end_box=[190,290,210,310])", "drag(start_box=[10,10,20,20], end_point=[200,300])",
     (1.0, "correct")),
    ("finish()", "finish()", (1.0, "correct")),
    ("click(150, 60)", "click(box=[120,40,180,80])", (0.0, "unparseable_action")),
    ("__import__('os').system('x')", "click(box=[120,40,180,80])", (0.0, "unparseable_action")),
    ("click(point=[150,60]); type(text='x')", "click(box=[120,40,180,80])", (0.0, "unparseable_action")),
    ("click(point=[150,60])", "tap on the button", (0.0, "bad_ground_truth")),
])
def test_gui(prediction, truth, expected):
    assert verify("gui", prediction, truth) == expected


def test_action_parser_escapes_and_limits():
    action = parse_action(r"type(text='it\'s a \"test\"\n')")
    assert action.args == {"text": "it's a \"test\"\n"}
    for bad in ["type(text='open", "click(box=[1,2,3,4,5,6,7,8,9])", "click(a=1, a=2)", "x" * 5000 + "()"]:
        with pytest.raises(ActionSyntaxError):
            parse_action(bad)


@pytest.mark.parametrize("prediction, truth, expected", [
    ("Paris", "paris", (1.0, "correct")),
    ("  The   Eiffel Tower. ", "the eiffel tower", (1.0, "correct")),
    ("\\text{blue}", "Blue", (1.0, "correct")),
    ("ＡＢＣ", "abc", (1.0, "correct")),  # full-width letters (NFKC)
    ("Pariss", "Paris", (0.0, "wrong_answer")),
])
def test_text(prediction, truth, expected):
    assert verify("text", prediction, truth) == expected


def test_text_without_normalisation_is_exact():
    assert verify("text", "Paris", "paris", normalize=False) == (0.0, "wrong_answer")
