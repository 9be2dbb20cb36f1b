"""Reports on VSI-Bench results beyond the official table: scores under either parser, micro means, per-dataset scores,
bootstrap intervals, run comparison, markdown tables, plots, and the `vsibench_acc.py` command line.

Imports lenient (the lenient parser), plots (figures), vsibench_acc (the official metric, never changed) and util.

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

Averages: `overall` is the macro mean of the task scores (as VSI-Bench and Spatial-R1 report), `micro` the mean
over questions (as the debiased VSI-Bench papers also quote). Intervals are 95 % percentile bootstraps,
resampling questions within each question type (so every task and sub-type keeps its size) and recomputing
the scores per resample; a comparison draws the same questions for both runs (paired).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import vsibench_acc
from lenient import score_lenient_record
from plots import plot_tasks
from util import MCA_QUESTION_TYPES, NA_QUESTION_TYPES, DataError, read_jsonl
from vsibench_acc import TASKS, group_by_task, macro_mean, macro_scores, task_means

PARSERS = ("official", "lenient")
RESAMPLES = 2000
REQUIRED_KEYS = ("question_type", "prediction", "ground_truth")


def scorer(parser: str):
    """The function scoring one record under `parser`."""
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; choose from {', '.join(PARSERS)}")
    return vsibench_acc.score_record if parser == "official" else score_lenient_record


def score_record(record: dict, parser: str = "official") -> float:
    """One question's metric under `parser`, in [0, 1]."""
    return scorer(parser)(record)


def scores_by_type(records: list[dict], parser: str = "official") -> dict[str, np.ndarray]:
    """Each question type's scores under `parser` (vsibench_acc.scores_by_type)."""
    return vsibench_acc.scores_by_type(records, scorer(parser))


def aggregate(records: list[dict], parser: str = "official") -> dict:
    """vsibench_acc.aggregate() under `parser`: per-task means in percent and the macro overall."""
    return vsibench_acc.scores_report(records, scores_by_type(records, parser), parser)


# ---------------------------------------------------------------- averages


def micro_mean(by_type: dict[str, np.ndarray]) -> float:
    """The mean over questions, in percent (0 when there are none)."""
    return 100.0 * float(np.concatenate(list(by_type.values())).mean()) if by_type else 0.0


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
        **vsibench_acc.scores_report(records, by_type, parser),
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


# ---------------------------------------------------------------- command line


def read_results(path: str) -> list[dict]:
    """A results JSONL's records, checked for what scoring needs; DataError names the file and the record."""
    try:
        records = read_jsonl(path)
    except OSError as error:
        raise DataError(f"{path}: {error.strerror}") from None
    first_record_of = {}  # id -> number of the record that has it
    for number, record in enumerate(records, 1):
        missing = [key for key in REQUIRED_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise DataError(f"{path}: record {number}: missing {', '.join(missing)}")
        if record["question_type"] not in MCA_QUESTION_TYPES + NA_QUESTION_TYPES:
            raise DataError(f"{path}: record {number}: unknown question_type {record['question_type']!r}")
        if "id" in record:  # a question scored twice would count twice: refused
            if record["id"] in first_record_of:
                raise DataError(
                    f"{path}: record {number}: id {record['id']} already in record {first_record_of[record['id']]}"
                )
            first_record_of[record["id"]] = number
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
    if not Path(path).suffix:  # matplotlib would write PATH.png instead
        raise DataError(f"{path}: give the plot a file name with its format's extension, e.g. tasks.png")
    try:
        plot_tasks(path, runs)
    except ImportError:
        raise DataError("--plot needs matplotlib: pip install matplotlib") from None
    except OSError as error:
        raise DataError(f"{path}: cannot write the plot ({error.strerror or error})") from None
    except ValueError as error:  # an extension matplotlib cannot write
        raise DataError(f"{path}: cannot write the plot ({error})") from None
    print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
