"""VSI-Bench scoring: the official rules (the default), a lenient parser, intervals, run comparison, tables.

Usage:
    python vsibench_acc.py RESULTS.jsonl                    # per-task table, micro mean, datasets, 95 % intervals
    python vsibench_acc.py RESULTS.jsonl --json             # one JSON object: aggregate()'s keys
    python vsibench_acc.py RESULTS.jsonl --json --stats     # ... plus micro, datasets, ci (summarize())
    python vsibench_acc.py RESULTS.jsonl --parser lenient   # read answers the lenient way
    python vsibench_acc.py A.jsonl --compare B.jsonl        # B against A, paired-bootstrap intervals
    python vsibench_acc.py RESULTS.jsonl --markdown         # Spatial-R1's published column layout
    python vsibench_acc.py A.jsonl --compare B.jsonl --plot tasks.png

Scores are recomputed from each record's raw `prediction`, so any results file can be rescored with either
parser. A record whose `error` is set scores 0 in its task; it is never dropped from the denominator.

Parsers:
- official: the VSI-Bench code. The text inside the last <answer>...</answer> (else the raw prediction) is cut
  to its first space-separated token, a trailing "." removed; multiple choice is a case-insensitive match with
  the ground-truth letter, numerical the mean relative accuracy of that token read as a float.
- lenient: for verbose and reasoning models. It reads the last <answer> span (also when its closing tag is
  missing), else the whole text, and never guesses:
  - multiple choice: the option the text states last: a letter that is the whole answer or a line of its own
    (`B`, `B.`, `(B)`, `**B**`), follows an answer cue (`Answer: B`, `The answer is B`, `**Answer:** (B)`,
    `the correct option is B`) or is the last word (`..., so B.`); or the full text of one option, as the whole
    answer or after a cue (`Left`, `The answer is Left`). When the text states none, the last letter written as
    an option label: `B. Right` or `B) Right` starting a line, `(B)`, `B)`, `**B**` (so "The answer is B. (A) is
    wrong because ..." reads B). Only the record's option letters count, and outside a whole answer only
    capitals, so the article "A" starting a sentence and the pronoun "I" are never read as answers.
  - numerical: the last number written in digits (`3`, `3.5 m`, `3m`, `1,200`) or in words up to nine
    hundred and ninety-nine (`three`, `twenty-one`, `twenty one`, `a hundred`, `two hundred and five`).
    Units are not converted; a number echoed from the question is not told apart (VSI-Bench questions hold
    none).
  A text that states no answer scores 0. Scoring is then the official one: letter match, mean relative accuracy.

Records of eval_qwen.py carry `score` (official); `score_record(record, parser="lenient")` gives `score_lenient`.
`--json` without `--stats` prints exactly `aggregate(records, parser)`, the scores eval_qwen.py puts in summary.json.

Averages: `overall` is the macro mean of the task scores (as VSI-Bench and Spatial-R1 report), `micro` the mean
over questions (as the debiased VSI-Bench papers also quote). Intervals are 95 % percentile bootstraps,
resampling questions within each question type (so every task and sub-type keeps its size) and recomputing
the scores per resample; a comparison draws the same questions for both runs (paired).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from util import MCA_QUESTION_TYPES, NA_QUESTION_TYPES, DataError, extract_answer, read_jsonl

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
PARSERS = ("official", "lenient")
RESAMPLES = 2000
REQUIRED_KEYS = ("question_type", "prediction", "ground_truth")


# ---------------------------------------------------------------- the official rules


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


# ---------------------------------------------------------------- the lenient parser

TAG = re.compile(r"</?\w+>")
# "Answer:", "The answer is", "the correct option is", "answer would be option", "**Answer:**" (any case).
CUE = r"(?i:\b(?:answer|option|choice)(?:\s+(?:is|would be|should be)\s*:?|\s*:)\s*(?:option\s+)?)[\s*(\[\"']*"
# Where a text states its answer; the last statement wins.
STATEMENT_PATTERNS = (
    re.compile(r"\A[\s*(\[]*([A-Za-z])[\s.:)\]*]*\Z"),  # the whole answer: "B", "b.", "(B)", "**B**"
    re.compile(r"^[\s*#>-]*\(?([A-Z])[.)]?[*\s]*$", re.MULTILINE),  # a line of its own: "B", "(B)", "**B.**"
    re.compile(CUE + r"([A-Z])\b"),  # "Answer: B", "The answer is (B)", "the correct option is B"
    re.compile(r"\b([A-Z])[\s.)*]*\Z"),  # the last word: "..., so B."
)
# Letters written as option labels; read only when the text makes no statement.
LABEL_PATTERNS = (
    re.compile(r"^[\s*#>-]*([A-Z])[.)]\s", re.MULTILINE),  # a line that starts like an option: "B. Right"
    re.compile(r"\(([A-Z])\)"),  # "(B)"
    re.compile(r"(?<![\w(])([A-Z])\)"),  # "B) Right"
    re.compile(r"\*\*([A-Z])\b"),  # "**B**", "**B. Right**"
)
OPTION = re.compile(r"\s*([A-Z])\s*[.):]\s*(.*)", re.DOTALL)
UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()  # fmt: skip
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
WORD_VALUES = {word: value for value, word in enumerate(UNITS)} | {w: 20 + 10 * i for i, w in enumerate(TENS)}
BELOW_HUNDRED = rf"(?:(?:{'|'.join(TENS)})(?:[\s-]+(?:{'|'.join(UNITS[1:10])}))?|{'|'.join(UNITS)})"
NUMBER_IN_WORDS = re.compile(
    rf"\b(?:(?:a|{'|'.join(UNITS[1:10])})\s+hundred(?:\s+(?:and\s+)?{BELOW_HUNDRED})?|{BELOW_HUNDRED})\b",
    re.IGNORECASE,
)
# "1,200" (thousands separators) or "3" / "3.5"; not inside a word, a longer number or a power ("scene0653", "m^2").
NUMBER_IN_DIGITS = re.compile(r"(?<![\w.^])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!,?\d)|(?<![\w.,^])\d+(?:\.\d+)?")


def answer_text(prediction: str | None) -> str:
    """The text of the last <answer> span, also when the closing tag is missing (output cut off); else the whole
    prediction. Other tags (<think>, </think>) become line breaks, so what follows them starts a line."""
    text = prediction or ""
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return TAG.sub("\n", text).strip()


def parse_options(options: list[str] | None) -> dict[str, str]:
    """Option letter -> option text, from ["A. Back", "B. Right"]; an option without its letter gets its place's."""
    parsed = {}
    for index, option in enumerate(options or []):
        match = OPTION.fullmatch(option)
        letter, text = match.groups() if match else (chr(ord("A") + index), option)
        parsed[letter] = text.strip()
    return parsed


def normalized(text: str) -> str:
    return text.strip(" \t\n*.\"'`").lower()


def letter_mentions(text: str, patterns: tuple[re.Pattern, ...]) -> list[tuple[int, str]]:
    """(end position, letter) of every letter that one of `patterns` finds."""
    return [(m.end(1), m.group(1).upper()) for pattern in patterns for m in pattern.finditer(text)]


def option_text_mentions(text: str, options: dict[str, str]) -> list[tuple[int, str]]:
    """(end position, letter) of every option whose full text is the whole answer or follows an answer cue."""
    found = []
    for letter, option in options.items():
        if not option:
            continue
        if normalized(text) == normalized(option):
            found.append((len(text), letter))
        cued = re.compile(CUE + rf"(?i:{re.escape(option)})(?![\w-])")
        found += [(m.end(), letter) for m in cued.finditer(text)]
    return found


def parse_choice(text: str, options: list[str] | None) -> str | None:
    """The option letter the text states last; else the last one it writes as an option label ("(B)", "B)");
    None when there is neither. Only the options' letters count (any capital when there are no options)."""
    parsed = parse_options(options)
    statements = letter_mentions(text, STATEMENT_PATTERNS) + option_text_mentions(text, parsed)
    for mentions in (statements, letter_mentions(text, LABEL_PATTERNS)):
        valid = [(end, letter) for end, letter in mentions if not parsed or letter in parsed]
        if valid:
            return max(valid)[1]
    return None


def words_to_number(words: str) -> int:
    """'twenty-one' -> 21, 'a hundred' -> 100, 'two hundred and five' -> 205."""
    value = 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word == "hundred":
            value *= 100
        elif word != "and":
            value += 1 if word == "a" else WORD_VALUES[word]
    return value


def parse_number(text: str) -> float | None:
    """The number the text states last, written in digits or words, or None when it states none."""
    digits = [(m.start(), float(m.group().replace(",", ""))) for m in NUMBER_IN_DIGITS.finditer(text)]
    words = [(m.start(), float(words_to_number(m.group()))) for m in NUMBER_IN_WORDS.finditer(text)]
    mentions = digits + words
    return max(mentions)[1] if mentions else None


def score_lenient(prediction: str | None, ground_truth: str, question_type: str, options: list[str] | None) -> float:
    """Metric of one prediction read by the lenient parser, in [0, 1]; 0 when it states no answer."""
    text = answer_text(prediction)
    parsed = parse_choice(text, options) if is_multiple_choice(question_type) else parse_number(text)
    return metric(parsed, ground_truth, question_type)


def score_record(record: dict, parser: str = "official") -> float:
    """One question's metric under `parser`; a failed question (its `error` set) scores 0 under either."""
    if record.get("error"):
        return 0.0
    if parser == "official":
        return score_answer(extract_answer(record["prediction"]), record["ground_truth"], record["question_type"])
    if parser == "lenient":
        return score_lenient(
            record["prediction"], record["ground_truth"], record["question_type"], record.get("options")
        )
    raise ValueError(f"unknown parser {parser!r}; choose from {', '.join(PARSERS)}")


# ---------------------------------------------------------------- averages


def task_of(question_type: str) -> str:
    return "object_rel_direction" if question_type in REL_DIRECTION_TYPES else question_type


def scores_by_type(records: list[dict], parser: str = "official") -> dict[str, np.ndarray]:
    """Each question type's scores in [0, 1], in record order; types sorted so every later step is ordered."""
    by_type: dict[str, list[float]] = {}
    for record in records:
        by_type.setdefault(record["question_type"], []).append(score_record(record, parser))
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


def micro_mean(by_type: dict[str, np.ndarray]) -> float:
    """The mean over questions, in percent (0 when there are none)."""
    return 100.0 * float(np.concatenate(list(by_type.values())).mean()) if by_type else 0.0


def aggregate(records: list[dict], parser: str = "official") -> dict:
    """Per-task means in percent; object_rel_direction is the mean of its three sub-type means, overall the
    unweighted mean of the task scores (macro)."""
    return scores_report(records, scores_by_type(records, parser), parser)


def scores_report(records: list[dict], by_type: dict[str, np.ndarray], parser: str) -> dict:
    """aggregate()'s result from the records' already computed scores by question type."""
    return {
        **macro_scores(by_type),
        "n": len(records),
        "failed": sum(1 for r in records if r.get("error")),
        "parser": parser,
    }


def dataset_breakdown(records: list[dict], parser: str = "official") -> dict[str, dict]:
    """Per source dataset (arkitscenes, scannet, scannetpp): macro overall, micro mean and question count."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record.get("dataset") or "unknown", []).append(record)
    breakdown = {}
    for name in sorted(groups):
        by_type = scores_by_type(groups[name], parser)
        breakdown[name] = {
            "overall": macro_scores(by_type)["overall"],
            "micro": micro_mean(by_type),
            "n": len(groups[name]),
        }
    return breakdown


# ---------------------------------------------------------------- bootstrap


def bootstrap_type_means(runs: list[dict[str, np.ndarray]], resamples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Per run, each question type's mean in percent over `resamples` resamples of its questions (drawn with
    replacement, the type's size kept). Every run gets the same question indices: runs must be aligned
    (same questions in the same order), which makes a comparison a paired bootstrap."""
    rng = np.random.default_rng(seed)
    resampled: list[dict[str, np.ndarray]] = [{} for _ in runs]
    for qtype, scores in runs[0].items():
        indices = rng.integers(0, len(scores), size=(resamples, len(scores)))
        for run, means in zip(runs, resampled, strict=True):
            means[qtype] = 100.0 * run[qtype][indices].mean(axis=1)
    return resampled


def interval(values) -> list[float]:
    """The 95 % percentile interval of bootstrap values."""
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def confidence_intervals(by_type: dict[str, np.ndarray], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """95 % bootstrap intervals: {"overall": [low, high], "tasks": {task: [low, high]}}, in percent."""
    (resampled,) = bootstrap_type_means([by_type], resamples, seed)
    tasks = task_means(resampled)
    return {"overall": interval(macro_mean(tasks)), "tasks": {task: interval(v) for task, v in tasks.items()}}


def summarize(records: list[dict], parser: str = "official", resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """aggregate() plus the micro mean, the per-dataset breakdown and 95 % bootstrap intervals."""
    by_type = scores_by_type(records, parser)
    return {
        **scores_report(records, by_type, parser),
        "micro": micro_mean(by_type),
        "datasets": dataset_breakdown(records, parser),
        "ci": confidence_intervals(by_type, resamples, seed),
        "bootstrap": {"resamples": resamples, "seed": seed},
    }


# ---------------------------------------------------------------- comparing two runs


def join_on_id(a_records: list[dict], b_records: list[dict], intersect: bool = False) -> tuple[list, list]:
    """Both runs' records for the same questions, in id order. Different id sets raise DataError unless
    `intersect`, which keeps the ids both runs have."""
    a_by_id, b_by_id = records_by_id(a_records, "A"), records_by_id(b_records, "B")
    only_a, only_b = a_by_id.keys() - b_by_id.keys(), b_by_id.keys() - a_by_id.keys()
    if (only_a or only_b) and not intersect:
        raise DataError(
            f"the runs cover different questions: {len(only_a)} id(s) only in A, {len(only_b)} only in B; "
            f"pass --intersect to compare the {len(a_by_id.keys() & b_by_id.keys())} shared ones"
        )
    ids = sorted(a_by_id.keys() & b_by_id.keys())
    if not ids:
        raise DataError("the runs share no question id")
    for qid in ids:
        a, b = a_by_id[qid], b_by_id[qid]
        if (a["question_type"], str(a["ground_truth"])) != (b["question_type"], str(b["ground_truth"])):
            raise DataError(f"id {qid}: the runs disagree on the question (question_type or ground_truth)")
    return [a_by_id[qid] for qid in ids], [b_by_id[qid] for qid in ids]


def records_by_id(records: list[dict], run: str) -> dict:
    by_id = {}
    for number, record in enumerate(records, 1):
        if "id" not in record:
            raise DataError(f"run {run}: record {number} has no id")
        if record["id"] in by_id:
            raise DataError(f"run {run}: id {record['id']} appears twice")
        by_id[record["id"]] = record
    return by_id


def flips(a_scores: np.ndarray, b_scores: np.ndarray) -> dict[str, int]:
    """How many questions scored higher in B than in A, and the other way round."""
    return {"b_better": int(np.sum(b_scores > a_scores)), "a_better": int(np.sum(b_scores < a_scores))}


def compare_runs(
    a_records: list[dict], b_records: list[dict], parser: str = "official", resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """B against A on the same questions (aligned, as join_on_id returns them): per task and overall A, B, the
    difference B - A with its paired-bootstrap 95 % interval, and how many questions flipped each way."""
    a_types, b_types = scores_by_type(a_records, parser), scores_by_type(b_records, parser)
    a_point, b_point = macro_scores(a_types), macro_scores(b_types)
    a_boot, b_boot = (task_means(means) for means in bootstrap_type_means([a_types, b_types], resamples, seed))
    a_tasks, b_tasks = group_by_task(a_types), group_by_task(b_types)

    def row(a: float, b: float, differences, flipped: dict) -> dict:
        return {"a": a, "b": b, "diff": b - a, "ci": interval(differences), **flipped}

    tasks = {
        task: row(
            a_point["tasks"][task],
            b_point["tasks"][task],
            b_boot[task] - a_boot[task],
            flips(np.concatenate(a_tasks[task]), np.concatenate(b_tasks[task])),
        )
        for task in a_point["tasks"]
    }
    overall_flips = flips(np.concatenate(list(a_types.values())), np.concatenate(list(b_types.values())))
    a_micro, b_micro = micro_mean(a_types), micro_mean(b_types)
    return {
        "parser": parser,
        "n": len(a_records),
        "tasks": tasks,
        "overall": row(a_point["overall"], b_point["overall"], macro_mean(b_boot) - macro_mean(a_boot), overall_flips),
        "micro": {"a": a_micro, "b": b_micro, "diff": b_micro - a_micro},
        "bootstrap": {"resamples": resamples, "seed": seed},
    }


# ---------------------------------------------------------------- tables and pictures


def format_interval(ci: list[float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"[{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]"


def format_table(result: dict) -> str:
    """The per-task table as aligned text, tasks in the published column order; with summarize()'s keys also the
    95 % intervals, the micro mean and the per-dataset scores."""
    width = max(len(t) for t in TASKS) + 2
    ci = result.get("ci")

    def line(label: str, value: float | None, bounds: list[float] | None = None) -> str:
        text = f"{label:<{width}}{'-' if value is None else f'{value:.2f}':>8}"
        return text + (f"  {format_interval(bounds)}" if bounds else "")

    lines = [f"{'task':<{width}}{'score':>8}" + ("  95% CI" if ci else "")]
    extra_tasks = [task for task in result["tasks"] if task not in TASKS]
    shown = [task for task in TASKS if task in result["tasks"] or not extra_tasks] + extra_tasks
    lines += [line(task, result["tasks"].get(task), ci and ci["tasks"].get(task)) for task in shown]
    lines.append(line("Overall (macro)", result["overall"], ci and ci["overall"]))
    if "micro" in result:
        lines.append(line("Overall (micro)", result["micro"]))
    if result.get("datasets"):
        lines.append(f"{'dataset':<{width}}{'macro':>8}{'micro':>8}{'questions':>11}")
        for name, scores in result["datasets"].items():
            lines.append(f"{name:<{width}}{scores['overall']:>8.2f}{scores['micro']:>8.2f}{scores['n']:>11}")
    lines.append(f"questions: {result['n']}, failed: {result['failed']}, parser: {result['parser']}")
    if ci:
        boot = result["bootstrap"]
        lines.append(
            f"95% CI: bootstrap of the questions within each type, {boot['resamples']} resamples, seed {boot['seed']}"
        )
    missing = [t for t in TASKS if t not in result["tasks"]]
    if missing and not extra_tasks:
        lines.append(f"no questions for: {', '.join(missing)} (overall is over the tasks present)")
    return "\n".join(lines)


def format_comparison(comparison: dict, a_name: str, b_name: str) -> str:
    """The comparison as aligned text: per task and overall A, B, B - A, its 95 % interval and the flips."""
    width = max(len(t) for t in TASKS) + 2
    lines = [
        f"A: {a_name}",
        f"B: {b_name}",
        f"{'task':<{width}}{'A':>8}{'B':>8}{'B-A':>8}  {'95% CI of B-A':<18}{'B>A':>6}{'B<A':>6}",
    ]
    rows = [*comparison["tasks"].items(), ("Overall (macro)", comparison["overall"])]
    for label, row in rows:
        lines.append(
            f"{label:<{width}}{row['a']:>8.2f}{row['b']:>8.2f}{row['diff']:>+8.2f}  "
            f"{format_interval(row['ci'], signed=True):<18}{row['b_better']:>6}{row['a_better']:>6}"
        )
    micro = comparison["micro"]
    lines.append(f"{'Overall (micro)':<{width}}{micro['a']:>8.2f}{micro['b']:>8.2f}{micro['diff']:>+8.2f}")
    boot = comparison["bootstrap"]
    lines.append(
        f"questions: {comparison['n']} in both runs, parser: {comparison['parser']}; paired bootstrap, "
        f"{boot['resamples']} resamples, seed {boot['seed']}; B>A / B<A: questions scored higher in B / in A"
    )
    return "\n".join(lines)


MARKDOWN_HEADER = "| Model | " + " | ".join(TASKS) + " | Overall_acc |"


def format_markdown(rows: list[tuple[str, dict]]) -> str:
    """A markdown table in the column layout of Spatial-R1's published table, one row per (name, aggregate())."""
    lines = [MARKDOWN_HEADER, "|" + "---|" * (len(TASKS) + 2)]
    for name, result in rows:
        cells = [f"{result['tasks'][t]:.2f}" if t in result["tasks"] else "-" for t in TASKS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['overall']:.2f} |")
    parsers = ", ".join(sorted({result["parser"] for _, result in rows}))
    lines += ["", f"Percent; Overall_acc is the macro mean of the task scores; parser: {parsers}."]
    return "\n".join(lines)


def plot_tasks(path: str, runs: list[tuple[str, dict]]) -> None:
    """Per-task bars with their 95 % intervals, one bar per run side by side, from (name, summarize()) pairs."""
    from matplotlib.figure import Figure  # imported here so scoring works without matplotlib

    labels = [*TASKS, "Overall (macro)"]
    positions = np.arange(len(labels))
    width = 0.8 / len(runs)
    figure = Figure(figsize=(12, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, (name, result) in enumerate(runs):
        values = np.array([result["tasks"].get(t, np.nan) for t in TASKS] + [result["overall"]])
        intervals = [result["ci"]["tasks"].get(t, [np.nan, np.nan]) for t in TASKS] + [result["ci"]["overall"]]
        low, high = np.array(intervals).T
        offset = (index - (len(runs) - 1) / 2) * width
        axes.bar(positions + offset, values, width, yerr=[values - low, high - values], capsize=3, label=name)
    axes.set_xticks(positions, labels, rotation=25, ha="right")
    axes.set_ylabel("score (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"VSI-Bench per task, parser {runs[0][1]['parser']}, 95% bootstrap intervals")
    figure.legend(loc="outside right upper")
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=120)


# ---------------------------------------------------------------- command line


def read_results(path: str) -> list[dict]:
    """A results JSONL's records, checked for what scoring needs; DataError names the file and the record."""
    try:
        records = read_jsonl(path)
    except OSError as error:
        raise DataError(f"{path}: {error.strerror}") from None
    for number, record in enumerate(records, 1):
        missing = [key for key in REQUIRED_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise DataError(f"{path}: record {number}: missing {', '.join(missing)}")
        if record["question_type"] not in MCA_QUESTION_TYPES + NA_QUESTION_TYPES:
            raise DataError(f"{path}: record {number}: unknown question_type {record['question_type']!r}")
    return records


def run_names(given: list[str], paths: list[str]) -> list[str]:
    """Each run's name in tables: the --name given for it, else the folder that holds its results file."""
    if len(given) > len(paths):
        raise DataError(f"--name given {len(given)} times for {len(paths)} run(s)")
    return [given[i] if i < len(given) else Path(path).resolve().parent.name for i, path in enumerate(paths)]


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score VSI-Bench results JSONL files; compare two runs.")
    parser.add_argument("results", help="results JSONL written by eval_qwen.py (run A when comparing)")
    parser.add_argument("--parser", choices=PARSERS, default="official", help="answer parser (default: official)")
    parser.add_argument("--compare", metavar="B.jsonl", help="compare this run (B) against RESULTS (A), joined on id")
    parser.add_argument("--intersect", action="store_true", help="compare only the ids both runs have")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    output.add_argument("--markdown", action="store_true", help="print a markdown table (Spatial-R1's layout)")
    parser.add_argument("--stats", action="store_true", help="with --json: add micro, datasets and ci")
    parser.add_argument("--plot", metavar="FILE.png", help="draw per-task bars with 95%% intervals to this file")
    parser.add_argument("--name", action="append", default=[], help="run name in tables (A, then B; default: folder)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default: {RESAMPLES})")
    return parser


def main(argv: list[str] | None = None) -> int:
    argument_parser = build_argument_parser()
    args = argument_parser.parse_args(argv)
    if args.resamples < 1:
        argument_parser.error("--resamples must be at least 1")
    try:
        report = compare_command(args) if args.compare else score_command(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


def score_command(args: argparse.Namespace) -> str:
    """The report on one run."""
    records = read_results(args.results)
    (name,) = run_names(args.name, [args.results])
    summary = summarize(records, args.parser, args.resamples, args.seed)
    if args.plot:
        save_plot(args.plot, [(name, summary)])
    if args.markdown:
        return format_markdown([(name, summary)])
    if args.json:  # without --stats exactly aggregate(), the scores eval_qwen.py writes to summary.json
        return json.dumps(summary if args.stats else aggregate(records, args.parser))
    return format_table(summary)


def compare_command(args: argparse.Namespace) -> str:
    """The report on run B (--compare) against run A (RESULTS)."""
    a_all, b_all = read_results(args.results), read_results(args.compare)
    try:
        runs = join_on_id(a_all, b_all, args.intersect)
    except DataError as error:
        raise DataError(f"A {args.results}, B {args.compare}: {error}") from None
    names = run_names(args.name, [args.results, args.compare])
    if args.plot:
        save_plot(
            args.plot,
            [(n, summarize(r, args.parser, args.resamples, args.seed)) for n, r in zip(names, runs, strict=True)],
        )
    if args.markdown:
        return format_markdown([(n, aggregate(r, args.parser)) for n, r in zip(names, runs, strict=True)])
    comparison = compare_runs(*runs, args.parser, args.resamples, args.seed)
    if args.json:
        header = {"names": {"a": names[0], "b": names[1]}, "files": {"a": args.results, "b": args.compare}}
        ids_left_out = {"only_in_a": len(a_all) - len(runs[0]), "only_in_b": len(b_all) - len(runs[1])}
        return json.dumps(header | ids_left_out | comparison)
    return format_comparison(comparison, f"{names[0]} ({args.results})", f"{names[1]} ({args.compare})")


def save_plot(path: str, runs: list[tuple[str, dict]]) -> None:
    try:
        plot_tasks(path, runs)
    except ImportError:
        raise DataError("--plot needs matplotlib: pip install matplotlib") from None
    except OSError as error:
        raise DataError(f"{path}: cannot write the plot ({error.strerror or error})") from None
    print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
