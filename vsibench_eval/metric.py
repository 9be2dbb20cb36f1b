"""The official VSI-Bench metric: parse a prediction, score it, average the scores per task.

Imports only numpy: it reads alone, side by side with the official utils.py. scoring/report.py builds the
rest (lenient parser, intervals, comparison, tables) on top of it.

Usage (the command line is scoring/report.py's; the root vsibench_acc.py and `vsibench-score` run it):
    python vsibench_acc.py RESULTS.jsonl [--json] [--stats] [--parser lenient] [--compare B.jsonl] [--markdown]

The rules, as in the official code (thinking-in-space, lmms_eval/tasks/vsibench/utils.py):
- the text inside the last <answer>...</answer> (else the raw prediction; a record's `answer_span`, set by the
  run's protocol, may say "first" or "none" instead) is cut to its first space-separated
  token, a trailing "." removed, then stripped: "A. Back" -> "A", " A" -> "" (wrong), "3 meters" -> 3;
- multiple choice: case-insensitive exact match with the ground-truth letter;
- numerical: mean relative accuracy over the thresholds 0.50, 0.55, ..., 0.95 (ten of them), with <=;
- per question type the mean; object_rel_direction is the unweighted mean of its easy, medium and hard
  means; the overall score is the unweighted mean of the 8 task scores (macro), in percent.
A record whose `error` is set scores 0 in its task; it is never dropped from the denominator.
"""

import re

import numpy as np

MCA_QUESTION_TYPES = (
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "object_rel_distance",
    "route_planning",
    "obj_appearance_order",
    "multiple choice",  # Video-R1-style data names only the kind of answer
)
NA_QUESTION_TYPES = (
    "object_abs_distance",
    "object_counting",
    "object_size_estimation",
    "room_size_estimation",
    "numerical",
)


ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(prediction: str, span: str = "last") -> str:
    """The text the official parse reads: with `span` "last" or "first", that <answer>...</answer> span,
    stripped, when the prediction has one; else (and with "none") the raw prediction."""
    spans = ANSWER_SPAN.findall(prediction or "") if span != "none" else []
    if not spans:
        return prediction or ""
    return (spans[0] if span == "first" else spans[-1]).strip()


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


# ---------------------------------------------------------------- one question


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


def is_multiple_choice(question_type: str) -> bool:
    if question_type in MCA_QUESTION_TYPES:
        return True
    if question_type in NA_QUESTION_TYPES:
        return False
    raise ValueError(f"unknown question_type {question_type!r}")


def metric(parsed: str | float | None, ground_truth: str, question_type: str) -> float:
    """Score in [0, 1] of a parsed answer: a letter for multiple choice, a number for numerical; None (no
    answer, or an unparsable number) scores 0."""
    if parsed is None:
        return 0.0
    if is_multiple_choice(question_type):
        return exact_match(parsed, str(ground_truth))
    target = to_float(str(ground_truth))
    return 0.0 if target is None else mean_relative_accuracy(parsed, target)


def score_answer(answer: str, ground_truth: str, question_type: str) -> float:
    """Metric of one extracted answer by the official rules, in [0, 1]."""
    token = first_token(answer)
    return metric(token if is_multiple_choice(question_type) else to_float(token), ground_truth, question_type)


def score_record(record: dict) -> float:
    """One result record's official score; a failed question (its `error` set) scores 0. The record's
    `answer_span` (none, first or last; last when absent) says which <answer> span is read."""
    if record.get("error"):
        return 0.0
    answer = extract_answer(record["prediction"], record.get("answer_span", "last"))
    return score_answer(answer, record["ground_truth"], record["question_type"])


# ---------------------------------------------------------------- averages


def task_of(question_type: str) -> str:
    return "object_rel_direction" if question_type in REL_DIRECTION_TYPES else question_type


def scores_by_type(records: list[dict], score=score_record) -> dict[str, np.ndarray]:
    """Each question type's scores in [0, 1] by `score(record)`, in record order; types sorted so every
    later step is ordered."""
    by_type: dict[str, list[float]] = {}
    for record in records:
        by_type.setdefault(record["question_type"], []).append(score(record))
    return {qtype: np.array(by_type[qtype]) for qtype in sorted(by_type)}


def group_by_task(by_type: dict) -> dict[str, list]:
    """Per task, the values of its question types: VSI-Bench's tasks in the published order, then any other
    question type (e.g. Video-R1's generic "multiple choice" and "numerical") as a task of its own."""
    parts: dict[str, list] = {}
    for qtype, value in by_type.items():
        parts.setdefault(task_of(qtype), []).append(value)
    order = [task for task in TASKS if task in parts] + sorted(task for task in parts if task not in TASKS)
    return {task: parts[task] for task in order}


def task_means(type_means: dict) -> dict:
    """Task scores from question-type scores (numbers, or arrays of bootstrap resamples): object_rel_direction
    is the unweighted mean of its sub-types."""
    return {task: np.mean(parts, axis=0) for task, parts in group_by_task(type_means).items()}


def macro_mean(tasks: dict):
    """The overall score: the unweighted mean of the task scores (0 when there are none)."""
    return np.mean(list(tasks.values()), axis=0) if tasks else 0.0


def macro_scores(by_type: dict[str, np.ndarray]) -> dict:
    """{"overall": macro mean, "tasks": {task: score}}, in percent."""
    tasks = task_means({qtype: 100.0 * float(np.mean(scores)) for qtype, scores in by_type.items()})
    return {"overall": float(macro_mean(tasks)), "tasks": {task: float(value) for task, value in tasks.items()}}


def scores_report(records: list[dict], by_type: dict[str, np.ndarray], parser: str = "official") -> dict:
    """{"overall", "tasks", "n", "failed", "parser"} from the records' scores by question type."""
    return {
        **macro_scores(by_type),
        "n": len(records),
        "failed": sum(1 for r in records if r.get("error")),
        "parser": parser,
    }


def aggregate(records: list[dict]) -> dict:
    """The official per-task table in percent: what `vsibench_acc.py RESULTS.jsonl --json` prints."""
    return scores_report(records, scores_by_type(records))
