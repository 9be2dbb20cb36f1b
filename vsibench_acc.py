"""VSI-Bench scoring with the official rules.

Usage:
    python vsibench_acc.py RESULTS.jsonl            # per-task table
    python vsibench_acc.py RESULTS.jsonl --json     # one JSON object

Scores are recomputed from each record's raw `prediction`, so any results file can be rescored.
A record whose `error` is set scores 0 in its task; it is never dropped from the denominator.
"""

import argparse
import json
import sys

import numpy as np

from util import MCA_QUESTION_TYPES, NA_QUESTION_TYPES, extract_answer, read_jsonl

REL_DIRECTION_TYPES = (
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
)
# The eight tasks, in the column order of Spatial-R1's published table.
TASKS = (
    "obj_appearance_order",
    "object_abs_distance",
    "object_counting",
    "object_rel_distance",
    "object_size_estimation",
    "room_size_estimation",
    "route_planning",
    "object_rel_direction",
)
# np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2)): the quotient is 8.999..., so ten thresholds.
MRA_THRESHOLDS = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
PARSERS = ("official",)


def first_token(text: str) -> str:
    """The official parse: first space-separated token, trailing '.' removed, then stripped."""
    return text.split(" ")[0].rstrip(".").strip()


def to_float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def exact_match(pred: str, target: str) -> float:
    return 1.0 if pred.lower() == target.lower() else 0.0


def mean_relative_accuracy(pred: float, target: float) -> float:
    """Fraction of thresholds t with |pred - target| / target <= 1 - t (note <=)."""
    if target == 0:  # the official code divides by zero here; only an exact 0 can be right
        return 1.0 if pred == 0 else 0.0
    relative_error = abs(pred - target) / abs(target)
    return float((relative_error <= 1 - MRA_THRESHOLDS).mean())


def score_answer(answer: str, ground_truth: str, question_type: str) -> float:
    """Metric of one extracted answer, in [0, 1]."""
    token = first_token(answer)
    if question_type in MCA_QUESTION_TYPES:
        return exact_match(token, str(ground_truth))
    if question_type in NA_QUESTION_TYPES:
        pred, target = to_float(token), to_float(str(ground_truth))
        if pred is None or target is None:
            return 0.0
        return mean_relative_accuracy(pred, target)
    raise ValueError(f"unknown question_type {question_type!r}")


def score_record(record: dict) -> float:
    """A failed question (its `error` set) scores 0."""
    if record.get("error"):
        return 0.0
    return score_answer(extract_answer(record["prediction"]), record["ground_truth"], record["question_type"])


def task_of(question_type: str) -> str:
    return "object_rel_direction" if question_type in REL_DIRECTION_TYPES else question_type


def aggregate(records: list[dict], parser: str = "official") -> dict:
    """Per-task means in percent; object_rel_direction is the mean of its three sub-type means,
    overall the unweighted mean of the task scores (macro)."""
    by_type: dict[str, list[float]] = {}
    for record in records:
        by_type.setdefault(record["question_type"], []).append(score_record(record))
    type_means = {qtype: 100.0 * float(np.mean(scores)) for qtype, scores in by_type.items()}

    tasks = {}
    for task in TASKS:
        if task == "object_rel_direction":
            parts = [type_means[t] for t in REL_DIRECTION_TYPES if t in type_means]
            if parts:
                tasks[task] = float(np.mean(parts))
        elif task in type_means:
            tasks[task] = type_means[task]
    return {
        "overall": float(np.mean(list(tasks.values()))) if tasks else 0.0,
        "tasks": tasks,
        "n": len(records),
        "failed": sum(1 for r in records if r.get("error")),
        "parser": parser,
    }


def format_table(result: dict) -> str:
    """The per-task table as aligned text, tasks in the published column order."""
    width = max(len(t) for t in TASKS) + 2
    lines = [f"{'task':<{width}}{'score':>8}"]
    for task in TASKS:
        value = result["tasks"].get(task)
        lines.append(f"{task:<{width}}{'-' if value is None else f'{value:.2f}':>8}")
    lines.append(f"{'Overall (macro)':<{width}}{result['overall']:>8.2f}")
    lines.append(f"questions: {result['n']}, failed: {result['failed']}, parser: {result['parser']}")
    missing = [t for t in TASKS if t not in result["tasks"]]
    if missing:
        lines.append(f"no questions for: {', '.join(missing)} (overall is over the tasks present)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score a VSI-Bench results JSONL with the official rules.")
    parser.add_argument("results", help="results JSONL written by eval_qwen.py")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--parser", choices=PARSERS, default="official", help="answer parser")
    args = parser.parse_args(argv)
    result = aggregate(read_jsonl(args.results), parser=args.parser)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
