"""Averages, bootstrap intervals, comparing two runs, and the command line around them (tables, plots, exports:
test_report_outputs.py)."""

import json

import pytest

from vsibench_eval.errors import DataError
from vsibench_eval.scoring import report
from vsibench_eval.scoring.report import (
    aggregate,
    compare_runs,
    confidence_intervals,
    format_table,
    join_on_id,
    summarize,
)


def rec(qid, qtype, prediction, gt, dataset="scannet", error=None, scene=None):
    """A result record; its video (scene) defaults to one per five consecutive ids."""
    options = None if qtype == "object_counting" else ["A. left", "B. right", "C. back", "D. front"]
    return {
        "id": qid,
        "dataset": dataset,
        "scene_name": scene or f"scene{qid // 5:04d}",
        "question_type": qtype,
        "prediction": prediction,
        "ground_truth": gt,
        "options": options,
        "error": error,
    }


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def run_with(correct_route: int, counting_predictions: list[str]) -> list[dict]:
    """40 route-planning questions, the first `correct_route` answered right, then counting questions (truth 10);
    ten videos, each with every tenth question."""
    route = [rec(i, "route_planning", "A" if i < correct_route else "B", "A", scene=f"v{i % 10}") for i in range(40)]
    counting = [
        rec(100 + i, "object_counting", p, "10", scene=f"v{i % 10}") for i, p in enumerate(counting_predictions)
    ]
    return route + counting


# A and B agree on all counting questions but three: B is better on two, worse on one.
A_COUNTING = ["10", "10", "5", "5", "10", "7"]
B_COUNTING = ["10", "10", "10", "10", "5", "7"]


# ---------------------------------------------------------------- averages


def test_micro_beside_macro_on_a_hand_computed_example():
    records = [
        rec(1, "object_counting", "10", "10"),
        rec(2, "object_counting", "0", "10"),  # counting: 50 %
        *(rec(10 + i, "route_planning", p, "A") for i, p in enumerate("AAAB")),  # route planning: 75 %
    ]
    summary = summarize(records)
    assert summary["overall"] == pytest.approx((50 + 75) / 2)  # macro: mean of the task means
    assert summary["micro"] == pytest.approx(100 * 4 / 6)  # micro: mean over the six questions


def test_dataset_breakdown():
    records = [
        rec(1, "route_planning", "A", "A", dataset="arkitscenes"),
        rec(2, "route_planning", "B", "A", dataset="arkitscenes"),
        rec(3, "object_counting", "10", "10", dataset="arkitscenes"),
        rec(4, "route_planning", "A", "A", dataset="scannetpp"),
    ]
    datasets = summarize(records)["datasets"]
    assert list(datasets) == ["arkitscenes", "scannetpp"]
    assert datasets["arkitscenes"] == {"overall": pytest.approx(75.0), "micro": pytest.approx(200 / 3), "n": 3}
    assert datasets["scannetpp"] == {"overall": 100.0, "micro": 100.0, "n": 1}


def test_summary_extends_aggregate_and_its_table():
    records = run_with(10, A_COUNTING)
    summary, result = summarize(records), aggregate(records)
    assert {key: summary[key] for key in result} == result
    assert json.loads(json.dumps(summary)) == summary  # JSON-serialisable
    table = format_table(summary)
    for needle in ("95% CI", "Overall (micro)", "scannet", "parser: official", "2000 resamples, seed 0"):
        assert needle in table
    assert "95% CI" not in format_table(result)  # the evaluator's table is unchanged


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_and_contains_the_point_estimate():
    records = run_with(25, A_COUNTING) + [rec(200 + i, "obj_appearance_order", "AB"[i % 2], "A") for i in range(30)]
    scores = [report.score_record(record) for record in records]
    first, again = confidence_intervals(records, scores, seed=0), confidence_intervals(records, scores, seed=0)
    assert first == again
    assert confidence_intervals(records, scores, seed=1) != first
    point = aggregate(records)
    assert first["overall"][0] <= point["overall"] <= first["overall"][1]
    for task, (low, high) in first["tasks"].items():
        assert low <= point["tasks"][task] <= high
    assert first["overall"][0] < first["overall"][1]


def test_bootstrap_intervals_on_a_full_sized_run_hold_the_true_rate():
    records = [rec(i, "route_planning", "AB"[i % 3 == 0], "A") for i in range(5130)]
    intervals = confidence_intervals(records, [report.score_record(r) for r in records], resamples=2000)
    assert intervals["overall"][0] < 100 * 2 / 3 < intervals["overall"][1]


# ---------------------------------------------------------------- comparing two runs


def test_comparison_of_two_runs_with_a_known_difference():
    a, b = run_with(10, A_COUNTING), run_with(20, B_COUNTING)  # B right on exactly 10 more route questions
    comparison = compare_runs(*join_on_id(a, b))
    route = comparison["tasks"]["route_planning"]
    assert (route["a"], route["b"], route["diff"]) == (25.0, 50.0, 25.0)
    assert (route["b_better"], route["a_better"]) == (10, 0)
    assert route["ci"][0] > 0  # a 25-point paired difference is not noise
    counting = comparison["tasks"]["object_counting"]
    # per question A: 1, 1, 0.1, 0.1, 1, 0.5 and B: 1, 1, 1, 1, 0.1, 0.5
    assert counting["diff"] == pytest.approx(100 * (4.6 - 3.7) / 6)
    assert (counting["b_better"], counting["a_better"]) == (2, 1)
    overall = comparison["overall"]
    assert overall["diff"] == pytest.approx((25.0 + counting["diff"]) / 2)
    assert (overall["b_better"], overall["a_better"]) == (12, 1)
    assert comparison["micro"]["diff"] == pytest.approx(100 * (10 + 0.9) / 46)
    assert comparison["n"] == 46


def test_identical_runs_differ_by_exactly_zero():
    a = run_with(10, A_COUNTING)
    comparison = compare_runs(*join_on_id(a, a))
    for row in (*comparison["tasks"].values(), comparison["overall"]):
        assert row["diff"] == 0 and row["ci"] == [0.0, 0.0] and row["b_better"] == row["a_better"] == 0


def test_join_is_on_id_not_on_position():
    a, b = run_with(10, A_COUNTING), run_with(20, B_COUNTING)
    a_joined, b_joined = join_on_id(a, list(reversed(b)))
    assert [r["id"] for r in a_joined] == [r["id"] for r in b_joined] == sorted(r["id"] for r in a)


def test_different_id_sets_are_refused_unless_intersect():
    a, b = run_with(10, A_COUNTING), run_with(20, B_COUNTING)
    b = b[2:] + [
        rec(300, "route_planning", "A", "A"),
        rec(301, "route_planning", "A", "A"),
        rec(302, "route_planning", "A", "A"),
    ]
    with pytest.raises(DataError, match=r"2 id\(s\) only in A, 3 only in B"):
        join_on_id(a, b)
    a_joined, b_joined = join_on_id(a, b, intersect=True)
    assert len(a_joined) == len(b_joined) == len(a) - 2


def test_cli_compare_refuses_different_id_sets(tmp_path, capsys):
    a = write(tmp_path / "a" / "r.jsonl", run_with(10, A_COUNTING))
    b = write(tmp_path / "b" / "r.jsonl", run_with(20, B_COUNTING)[1:])
    assert report.main([a, "--compare", b]) == 2
    assert "1 id(s) only in A, 0 only in B" in capsys.readouterr().err
    assert report.main([a, "--compare", b, "--intersect", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 45 and out["only_in_a"] == 1 and out["only_in_b"] == 0
    assert out["names"] == {"a": "a", "b": "b"} and out["parser"] == "official"


def test_cli_compare_json_and_table(tmp_path, capsys):
    a = write(tmp_path / "a" / "r.jsonl", run_with(10, A_COUNTING))
    b = write(tmp_path / "b" / "r.jsonl", run_with(20, B_COUNTING))
    assert report.main([a, "--compare", b, "--json", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(out)) and out["bootstrap"] == {"resamples": 2000, "seed": 3, "unit": "video"}
    assert out["tasks"]["route_planning"]["diff"] == 25.0
    assert set(out["overall"]) == {"a", "b", "diff", "ci", "b_better", "a_better"}
    assert report.main([a, "--compare", b, "--parser", "lenient"]) == 0
    table = capsys.readouterr().out
    assert "route_planning" in table and "+25.00" in table and "parser: lenient" in table


# ---------------------------------------------------------------- the command line on one run


def test_cli_json_is_aggregate_and_stats_add_keys(tmp_path, capsys):
    records = run_with(10, A_COUNTING)
    path = write(tmp_path / "run" / "r.jsonl", records)
    assert report.main([path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == aggregate(records)
    assert report.main([path, "--json", "--parser", "lenient"]) == 0
    assert json.loads(capsys.readouterr().out) == aggregate(records, parser="lenient")
    assert report.main([path, "--json", "--stats", "--seed", "7", "--resamples", "500"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(summarize(records, "official", 500, 7)))
    assert {"overall", "tasks", "n", "failed", "parser", "micro", "datasets", "ci"} <= set(out)


@pytest.mark.parametrize(
    "content, message", [(None, "r.jsonl: No such file"), ('{"id": 1}\n{oops\n', "r.jsonl: line 2")]
)
def test_cli_bad_input_names_the_file(tmp_path, capsys, content, message):
    path = tmp_path / "r.jsonl"
    if content is not None:
        path.write_text(content)
    assert report.main([str(path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_record_without_needed_keys(tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", [{"id": 1, "question_type": "route_planning"}])
    assert report.main([path]) == 2
    assert "r.jsonl: record 1: missing prediction, ground_truth" in capsys.readouterr().err
