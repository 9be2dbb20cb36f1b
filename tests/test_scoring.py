"""The official VSI-Bench metric on hand-computed cases, including its quirks: the first space-separated token is
the answer ("A. Back" -> A, " A" -> empty), ten thresholds from a float quotient, <= in mean relative accuracy,
object_rel_direction as the mean of its three sub-type means, the overall as the mean of the task scores."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vsibench_eval.metric import (
    MRA_THRESHOLDS,
    aggregate,
    first_token,
    mean_relative_accuracy,
    score_answer,
    score_record,
)
from vsibench_eval.scoring import report


def test_ten_thresholds_from_the_float_quotient():
    assert len(MRA_THRESHOLDS) == 10
    assert MRA_THRESHOLDS[0] == pytest.approx(0.5) and MRA_THRESHOLDS[-1] == pytest.approx(0.95)


@pytest.mark.parametrize(
    "text, token",
    [
        ("A. Back", "A"),
        ("A.", "A"),
        (" A", ""),
        ("3 meters", "3"),
        ("B\n", "B"),
        ("Answer: A", "Answer:"),
        ("MAX.", "MAX"),  # only dots are cut off the end
        ("3..", "3"),
    ],
)
def test_first_token(text, token):
    assert first_token(text) == token


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        (3.0, 3.0, 1.0),  # exact
        (3.3, 3.0, 0.9),  # 10 % off: thresholds 0.50..0.90 pass
        (4.0, 3.0, 0.4),  # 33 % off
        (1.5, 3.0, 0.1),  # 50 % off passes only 0.50 (<=, not <)
        (0.0, 3.0, 0.0),
        (10.0, 3.0, 0.0),
        (2.85, 3.0, 1.0),  # 5 % off passes 0.95 as well
        (1.12, 1.0, 0.8),  # 12 % off: 0.50 .. 0.85
        (0.0, 0.0, 1.0),  # a ground truth of 0: only an exact 0 is right (the official code divides by zero)
        (0.5, 0.0, 0.0),
    ],
)
def test_mean_relative_accuracy(pred, gt, expected):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize(
    "answer, expected",
    [("A", 1.0), ("a", 1.0), ("A. Back", 1.0), ("A.", 1.0), (" A", 0.0), ("(A)", 0.0), ("Answer: A", 0.0), ("B", 0.0)],
)
def test_multiple_choice_first_token_rule(answer, expected):
    assert score_answer(answer, "A", "route_planning") == expected


@pytest.mark.parametrize(
    "answer, expected",
    [("3", 1.0), ("3.", 1.0), ("3 meters", 1.0), ("3m", 0.0), ("three", 0.0), ("1,200", 0.0), ("4", 0.4), ("", 0.0)],
)
def test_numerical_parsing(answer, expected):
    assert score_answer(answer, "3", "object_abs_distance") == pytest.approx(expected)


def test_answer_span_is_scored_when_present():
    record = {
        "prediction": "<think>two chairs and one more</think> <answer> 3 </answer>",
        "ground_truth": "3",
        "question_type": "object_counting",
        "error": None,
    }
    assert score_record(record) == 1.0
    record["prediction"] = "<think>..</think><answer>B</answer>"
    record |= {"ground_truth": "B", "question_type": "object_rel_distance"}
    assert score_record(record) == 1.0


@pytest.mark.parametrize(
    "answer_span, read",
    [("first", "B"), ("last", "C"), ("none", "A"), (None, "C")],  # None: a record written before the field existed
)
def test_the_record_s_answer_span_picks_what_is_scored(answer_span, read):
    # Raw, the prediction's first token is A; its first <answer> span says B, its last C.
    record = {"prediction": "A <answer>B</answer> no, <answer>C</answer>", "question_type": "route_planning"}
    if answer_span is not None:
        record["answer_span"] = answer_span
    assert [score_record(record | {"ground_truth": letter}) for letter in "ABC"] == [float(c == read) for c in "ABC"]


def test_failed_record_scores_zero_even_with_right_text():
    record = {"prediction": "A", "ground_truth": "A", "question_type": "route_planning", "error": "video missing"}
    assert score_record(record) == 0.0


def rec(qtype, prediction, gt, error=None):
    return {"question_type": qtype, "prediction": prediction, "ground_truth": gt, "error": error}


def test_aggregate_macro_and_rel_direction_merge():
    records = [
        rec("object_rel_direction_easy", "A", "A"),  # easy mean 1.0
        rec("object_rel_direction_medium", "A", "B"),  # medium 0.0
        rec("object_rel_direction_medium", "B", "B"),  # medium -> 0.5
        rec("object_rel_direction_hard", "C", "C"),  # hard 1.0
        rec("object_counting", "4", "3"),  # 0.4
        rec("object_counting", "3", "3", error="video missing"),  # failed: 0, counted
    ]
    result = aggregate(records)
    # rel_direction = mean(1.0, 0.5, 1.0), not the pooled 3/4
    assert result["tasks"]["object_rel_direction"] == pytest.approx(100 * 2.5 / 3)
    assert result["tasks"]["object_counting"] == pytest.approx(20.0)
    assert result["overall"] == pytest.approx((100 * 2.5 / 3 + 20.0) / 2)
    assert result["n"] == 6 and result["failed"] == 1 and result["parser"] == "official"
    assert set(result["tasks"]) == {"object_rel_direction", "object_counting"}


def test_cli_json_is_one_object(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    rows = [rec("object_counting", "3", "3"), rec("route_planning", "B", "A")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"overall", "tasks", "n", "failed", "parser"}
    assert out["tasks"] == {"object_counting": 100.0, "route_planning": 0.0}
    assert out["overall"] == 50.0 and out["n"] == 2


def test_cli_table(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec("object_counting", "3", "3")) + "\n")
    assert report.main([str(path), "--bootstrap_unit", "question"]) == 0  # a bare record: no video to resample
    out = capsys.readouterr().out
    assert "object_counting" in out and "100.00" in out and "Overall (macro)" in out
    assert "bootstrap of questions within each question type" in out


# One results file, every score worked out by hand (question type, prediction, ground truth, error; its score).
HAND_SCORED = [
    ("obj_appearance_order", "A", "A", None),  # 1
    ("object_abs_distance", "2.25", "2", None),  # 12.5 % off: thresholds 0.50 .. 0.85 pass: 0.8
    ("object_abs_distance", "1 meter", "2", None),  # 50 % off: only 0.50 passes (<=): 0.1
    ("object_counting", "3", "3", None),  # 1
    ("object_counting", "4", "3", None),  # 33 % off: 0.50 .. 0.65: 0.4
    ("object_rel_distance", "D", "A", None),  # 0
    ("object_size_estimation", "100", "100", None),  # 1
    ("object_size_estimation", "100", "100", "video failed: gone"),  # failed: 0, still counted
    ("room_size_estimation", "three", "3", None),  # not a number: 0
    ("route_planning", "B", "B", None),  # 1
    ("route_planning", "b.", "B", None),  # "b", case-insensitive: 1
    ("route_planning", " B", "B", None),  # leading space: empty first token: 0
    ("route_planning", "<think>left</think><answer>C</answer>", "C", None),  # the answer span: 1
    ("object_rel_direction_easy", "A", "A", None),  # easy: 1, 1 -> 100
    ("object_rel_direction_easy", "A.", "A", None),
    ("object_rel_direction_medium", "A", "B", None),  # medium: 0, 1 -> 50
    ("object_rel_direction_medium", "B. left", "B", None),
    ("object_rel_direction_hard", "C", "D", None),  # hard: 0
]
HAND_TASKS = {
    "obj_appearance_order": 100.0,
    "object_abs_distance": 45.0,  # (0.8 + 0.1) / 2
    "object_counting": 70.0,  # (1 + 0.4) / 2
    "object_rel_distance": 0.0,
    "object_size_estimation": 50.0,
    "room_size_estimation": 0.0,
    "route_planning": 75.0,
    "object_rel_direction": 50.0,  # (100 + 50 + 0) / 3, not the pooled 3 of 5
}


def test_a_hand_scored_results_file_through_the_command_line(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [
        {"id": i, "question_type": t, "prediction": p, "ground_truth": gt, "error": e}
        for i, (t, p, gt, e) in enumerate(HAND_SCORED)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "vsibench_acc.py", str(path), "--json"], cwd=root, capture_output=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tasks"] == pytest.approx(HAND_TASKS)
    assert list(result["tasks"]) == list(HAND_TASKS)  # the published column order
    assert result["overall"] == pytest.approx(390 / 8)  # the mean of the eight task scores
    assert (result["n"], result["failed"], result["parser"]) == (18, 1, "official")


def test_unscorable_input():
    assert score_answer("3", "n/a", "object_counting") == 0.0  # a ground truth that is not a number: 0
    with pytest.raises(ValueError, match="unknown question_type 'object_colour'"):
        score_answer("A", "A", "object_colour")


def test_no_records_score_zero_and_generic_types_are_tasks_after_the_published_ones():
    assert aggregate([]) == {"overall": 0.0, "tasks": {}, "n": 0, "failed": 0, "parser": "official"}
    records = [rec("numerical", "2", "2"), rec("object_counting", "4", "3"), rec("multiple choice", "B", "A")]
    result = aggregate(records)
    assert result["tasks"] == pytest.approx({"object_counting": 40.0, "multiple choice": 0.0, "numerical": 100.0})
    assert list(result["tasks"]) == ["object_counting", "multiple choice", "numerical"]
    assert result["overall"] == pytest.approx(140 / 3)
