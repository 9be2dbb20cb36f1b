"""Reports on VSI-Bench results beyond the official table: scores under either parser, micro means, questions
per task, chance levels, per-dataset scores, bootstrap intervals, run comparison, and the `vsibench_acc.py`
command line that prints them as tables and hands them to the plots, the lmms-eval export and wandb.

It builds on the official metric (metric.py, never changed), the lenient parser (lenient.py), the bootstrap,
tables, published reference rows, plots, the lmms-eval export and wandb tracking.

Usage:
    python vsibench_acc.py RESULTS.jsonl                    # per-task table, micro mean, datasets, 95 % intervals
    python vsibench_acc.py RESULTS.jsonl --json             # one JSON object: aggregate()'s keys
    python vsibench_acc.py RESULTS.jsonl --json --stats     # ... plus micro, task_n, chance, datasets, ci
    python vsibench_acc.py RESULTS.jsonl --parser lenient   # read answers the lenient way
    python vsibench_acc.py A.jsonl --compare B.jsonl        # B against A, paired-bootstrap intervals
    python vsibench_acc.py A.jsonl B.jsonl C.jsonl --markdown   # one row per run, Spatial-R1's columns
    python vsibench_acc.py A.jsonl B.jsonl --csv --layout paper # the VSI-Bench paper's columns, as CSV
    python vsibench_acc.py RESULTS.jsonl --markdown --reference # + published rows of the run's protocol
    python vsibench_acc.py RESULTS.jsonl --bootstrap_unit question  # intervals resampling questions, not videos
    python vsibench_acc.py A.jsonl --compare B.jsonl --plot diff.png   # B - A per task with paired intervals
    python vsibench_acc.py RESULTS.jsonl --export lmms_eval out/       # lmms-eval's results and samples files
    python vsibench_acc.py RESULTS.jsonl --wandb_project P             # log to Weights & Biases

Scores are recomputed from each record's raw `prediction`, so any results file can be rescored with either
parser. A record whose `error` is set scores 0 in its task; it is never dropped from the denominator.

Averages: `overall` is the macro mean of the task scores (as VSI-Bench and Spatial-R1 report), `micro` the mean
over questions (as the debiased VSI-Bench papers also quote). Intervals are 95 % percentile bootstraps that
resample whole videos within each dataset by default, or questions within each question type
(`--bootstrap_unit question`), recomputing the scores per resample; a comparison draws the same videos (or
questions) for both runs (paired). See bootstrap.py.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vsibench_eval import metric as official
from vsibench_eval.errors import DataError
from vsibench_eval.inputs.questions import read_jsonl
from vsibench_eval.metric import (
    MCA_QUESTION_TYPES,
    NA_QUESTION_TYPES,
    group_by_task,
    is_multiple_choice,
    macro_scores,
    task_means,
)
from vsibench_eval.scoring.bootstrap import RESAMPLES, UNITS, confidence_intervals, paired_differences
from vsibench_eval.scoring.lenient import score_lenient_record
from vsibench_eval.scoring.lmms_export import EXPORT_FORMATS, write_lmms_eval
from vsibench_eval.scoring.plots import check_plot_path, plot_comparison, plot_scores
from vsibench_eval.scoring.references import csv_with_references, load_references, reference_section
from vsibench_eval.scoring.tables import (
    LAYOUTS,
    distinct_labels,
    format_comparison,
    format_csv,
    format_markdown,
    format_table,
)
from vsibench_eval.scoring.tracking import log_run, require_wandb
from vsibench_eval.settings.command_line import StrictParser

PARSERS = ("official", "lenient")
ROUGH_BELOW = 1000  # fewer bootstrap resamples than this give unstable 95 % intervals: say so
REQUIRED_KEYS = ("question_type", "prediction", "ground_truth")


def scorer(parser: str):
    """The function scoring one record under `parser`."""
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; choose from {', '.join(PARSERS)}")
    return official.score_record if parser == "official" else score_lenient_record


def score_record(record: dict, parser: str = "official") -> float:
    """One question's metric under `parser`, in [0, 1]."""
    return scorer(parser)(record)


def scores_by_type(records: list[dict], parser: str = "official") -> dict[str, np.ndarray]:
    """Each question type's scores under `parser` (official.scores_by_type)."""
    return official.scores_by_type(records, scorer(parser))


def aggregate(records: list[dict], parser: str = "official") -> dict:
    """official.aggregate() under `parser`: per-task means in percent and the macro overall."""
    return official.scores_report(records, scores_by_type(records, parser), parser)


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


def task_counts(by_type: dict[str, np.ndarray]) -> dict[str, int]:
    """The number of questions of each task."""
    return {task: sum(len(scores) for scores in parts) for task, parts in group_by_task(by_type).items()}


def chance_levels(records: list[dict]) -> dict[str, float]:
    """Per multiple-choice task, the expected score of a uniformly random option, in percent: each question's
    1 / number of options, averaged like the scores (per question type; object_rel_direction over its sub-types)."""
    by_type: dict[str, list[float]] = {}
    for record in records:
        if is_multiple_choice(record["question_type"]) and record.get("options"):
            by_type.setdefault(record["question_type"], []).append(1.0 / len(record["options"]))
    type_means = {qtype: float(np.mean(by_type[qtype])) for qtype in sorted(by_type)}
    return {task: 100.0 * float(value) for task, value in task_means(type_means).items()}


def summarize(
    records: list[dict], parser: str = "official", resamples: int = RESAMPLES, seed: int = 0, unit: str = "video"
) -> dict:
    """aggregate() plus the micro mean, the questions per task, the multiple-choice tasks' chance levels, the
    per-dataset breakdown and 95 % bootstrap intervals resampling `unit` (bootstrap.py)."""
    by_type = scores_by_type(records, parser)
    scores = [score_record(record, parser) for record in records]
    return {
        **official.scores_report(records, by_type, parser),
        "micro": micro_mean(by_type),
        "task_n": task_counts(by_type),
        "chance": chance_levels(records),
        "datasets": dataset_breakdown(records, parser),
        "ci": confidence_intervals(records, scores, unit, resamples, seed),
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": unit},
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
    a_records: list[dict],
    b_records: list[dict],
    parser: str = "official",
    resamples: int = RESAMPLES,
    seed: int = 0,
    unit: str = "video",
) -> dict:
    """B against A on the same questions (aligned, as join_on_id returns them): per task and overall A, B, the
    difference B - A with its paired-bootstrap 95 % interval (resampling `unit` in both runs at once), and how
    many questions flipped each way."""
    a_types, b_types = scores_by_type(a_records, parser), scores_by_type(b_records, parser)
    a_point, b_point = macro_scores(a_types), macro_scores(b_types)
    a_scores = [score_record(record, parser) for record in a_records]
    b_scores = [score_record(record, parser) for record in b_records]
    intervals = paired_differences(a_records, a_scores, b_scores, unit, resamples, seed)
    a_tasks, b_tasks = group_by_task(a_types), group_by_task(b_types)

    def row(a: float, b: float, ci: list[float], flipped: dict) -> dict:
        return {"a": a, "b": b, "diff": b - a, "ci": ci, **flipped}

    tasks = {
        task: row(
            a_point["tasks"][task],
            b_point["tasks"][task],
            intervals["tasks"][task],
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
        "overall": row(a_point["overall"], b_point["overall"], intervals["overall"], overall_flips),
        "micro": {"a": a_micro, "b": b_micro, "diff": b_micro - a_micro, "ci": intervals["micro"]},
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": unit},
    }


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
        if "id" in record:  # a question scored twice would count twice: refused, however its id is written
            key = id_key(record["id"])
            if key in first_record_of:
                first = first_record_of[key]
                raise DataError(f"{path}: record {number}: id {record['id']!r} already in record {first}")
            first_record_of[key] = number
    if not records:
        raise DataError(f"{path}: no records (an empty results file)")
    return records


def id_key(value) -> str:
    """An id as the question it names: 0, "0" and 0.0 are the same question."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def run_config(results_path: str) -> dict:
    """The config.json of the run directory that holds a results file; {} when there is none (a bare file)."""
    config_file = Path(results_path).resolve().parent / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def run_names(given: list[str], paths: list[str]) -> list[str]:
    """Each run's name in tables: the --name given for it, else its model from config.json (with as much of the
    checkpoint path as tells the runs apart), else the folder that holds its results file."""
    if len(given) > len(paths):
        raise DataError(f"--name given {len(given)} times for {len(paths)} run(s)")
    folders = [Path(path).resolve().parent.name for path in paths]
    models = [str(run_config(path).get("model_name") or "").rstrip("/") for path in paths]
    parts = [model.split("/") if model else [folder] for model, folder in zip(models, folders, strict=True)]
    labels = distinct_labels(parts, folders)
    return [given[i] if i < len(given) else label for i, label in enumerate(labels)]


def build_argument_parser() -> argparse.ArgumentParser:
    parser = StrictParser(description="Score VSI-Bench results JSONL files; tabulate or compare runs.")
    parser.add_argument("results", nargs="+", help="results JSONL file(s) written by eval_qwen.py (A when comparing)")
    parser.add_argument("--parser", choices=PARSERS, default="official", help="answer parser (default: official)")
    parser.add_argument("--compare", metavar="B.jsonl", help="compare this run (B) against RESULTS (A), joined on id")
    parser.add_argument("--intersect", action="store_true", help="compare only the ids both runs have")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of the table (a list for N runs)")
    output.add_argument("--markdown", action="store_true", help="print a markdown table, one row per run")
    output.add_argument("--csv", action="store_true", help="print the same table as CSV")
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="spatial_r1", help="columns of --markdown/--csv: "
                        "Spatial-R1's published table (default) or the VSI-Bench paper's")  # fmt: skip
    parser.add_argument("--reference", action="store_true", help="add the published rows (scoring/references.csv) "
                        "of each run's protocol, with our difference and interval mark; others set apart")  # fmt: skip
    parser.add_argument("--stats", action="store_true", help="with --json: add micro, datasets, ci, task_n, chance")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the scores (or B - A when comparing) to this file")
    parser.add_argument("--export", nargs=2, metavar=("FORMAT", "DIR"), help="also write each run for another tool: "
                        f"{', '.join(EXPORT_FORMATS)} (results JSON and per-sample JSONL)")  # fmt: skip
    parser.add_argument("--wandb_project", metavar="P", help="also log each run to this Weights & Biases project")
    parser.add_argument("--name", action="append", default=[], help="run name in tables, in order (default: model)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default: {RESAMPLES})")
    parser.add_argument("--bootstrap_unit", choices=UNITS, default="video", help="what the intervals resample: whole "
                        "videos within each dataset (default) or questions within each question type")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    argument_parser = build_argument_parser()
    args = argument_parser.parse_args(argv)
    if args.resamples < 1:
        argument_parser.error("--resamples must be at least 1")
    if args.compare and len(args.results) > 1:
        argument_parser.error("--compare takes one run A: RESULTS.jsonl --compare B.jsonl")
    if args.reference and (args.json or args.compare):
        argument_parser.error("--reference goes with the tables of one or more runs: the text table, --markdown, --csv")
    if args.export and args.export[0] not in EXPORT_FORMATS:
        argument_parser.error(f"--export: unknown format {args.export[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
    try:
        if args.plot:
            check_plot_path(args.plot)  # before any work, so a typo costs nothing
        if args.wandb_project:
            require_wandb()
        paths = [args.results[0], args.compare] if args.compare else args.results
        runs = [(name, path, read_results(path)) for name, path in zip(run_names(args.name, paths), paths, strict=True)]
        text, draw = compare_command(args, runs) if args.compare else score_command(args, runs)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)  # printed before the files below are written: a bad output path loses no report
    if args.resamples < ROUGH_BELOW:
        print(f"note: 95% intervals from {args.resamples} resamples are rough; use {RESAMPLES}", file=sys.stderr)
    try:
        if args.plot:
            save_plot(args.plot, draw)
        for name, path, records in runs:
            if args.export:
                export_run(args.export[1], path, records, args.parser)
            if args.wandb_project:
                track_run(args, name, path, records)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def score_command(args: argparse.Namespace, runs: list[tuple[str, str, list[dict]]]) -> tuple[str, Callable]:
    """The report on one or more runs, and the function that draws their plot."""
    needs_stats = args.plot or args.stats or args.reference or not (args.json or args.markdown or args.csv)
    summaries = [summarize_run(args, path, records) for _, path, records in runs if needs_stats]
    results = summaries or [aggregate(records, args.parser) for _, _, records in runs]
    rows = [(name, result) for (name, _, _), result in zip(runs, results, strict=True)]

    def draw(path: str) -> None:
        plot_scores(path, list(zip([name for name, _, _ in runs], summaries, strict=True)))

    if args.json:  # without --stats exactly aggregate(), the scores eval_qwen.py writes to summary.json
        objects = results if args.stats else [aggregate(records, args.parser) for _, _, records in runs]
        if len(runs) == 1:
            return json.dumps(objects[0]), draw
        return json.dumps([{"name": n, "file": p} | o for (n, p, _), o in zip(runs, objects, strict=True)]), draw
    if args.markdown or args.csv:
        text = (format_markdown if args.markdown else format_csv)(rows, args.layout)
    else:
        tables = [format_table(summary) for summary in summaries]
        named = [f"{name} ({path})\n{table}" for (name, path, _), table in zip(runs, tables, strict=True)]
        text = tables[0] if len(runs) == 1 else "\n\n".join(named)
    if not args.reference:
        return text, draw
    protocols = [run_config(path).get("protocol") for _, path, _ in runs]
    published = [
        (name, summary, protocol) for (name, _, _), summary, protocol in zip(runs, summaries, protocols, strict=True)
    ]
    if args.csv:
        return csv_with_references(published, load_references(), args.layout), draw
    return text + "\n\n" + reference_section(published, load_references(), args.layout), draw


def summarize_run(args: argparse.Namespace, path: str, records: list[dict]) -> dict:
    """summarize() with the command line's parser and bootstrap settings; DataError names the results file."""
    try:
        return summarize(records, args.parser, args.resamples, args.seed, args.bootstrap_unit)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None


def compare_command(args: argparse.Namespace, runs: list[tuple[str, str, list[dict]]]) -> tuple[str, Callable]:
    """The report on run B (--compare) against run A (RESULTS), and the function that draws B - A."""
    (a_name, a_path, a_all), (b_name, b_path, b_all) = runs
    try:
        joined = join_on_id(a_all, b_all, args.intersect)
    except DataError as error:
        raise DataError(f"A {a_path}, B {b_path}: {error}") from None
    try:
        comparison = compare_runs(*joined, args.parser, args.resamples, args.seed, args.bootstrap_unit)
    except DataError as error:  # a record without its video, named by its place among the shared ids
        raise DataError(f"A {a_path}, B {b_path}: {error}") from None

    def draw(path: str) -> None:
        summaries = [summarize_run(args, path, records) for path, records in zip((a_path, b_path), joined, strict=True)]
        plot_comparison(path, comparison, [(a_name, summaries[0]), (b_name, summaries[1])])

    if args.markdown or args.csv:
        rows = [(a_name, aggregate(joined[0], args.parser)), (b_name, aggregate(joined[1], args.parser))]
        return (format_markdown if args.markdown else format_csv)(rows, args.layout), draw
    if args.json:
        header = {"names": {"a": a_name, "b": b_name}, "files": {"a": a_path, "b": b_path}}
        ids_left_out = {"only_in_a": len(a_all) - len(joined[0]), "only_in_b": len(b_all) - len(joined[1])}
        return json.dumps(header | ids_left_out | comparison), draw
    return format_comparison(comparison, f"{a_name} ({a_path})", f"{b_name} ({b_path})"), draw


def save_plot(path: str, draw: Callable[[str], None]) -> None:
    try:
        draw(path)
    except ImportError:
        raise DataError("--plot needs matplotlib: pip install matplotlib") from None
    except OSError as error:
        raise DataError(f"{path}: cannot write the plot ({error.strerror or error})") from None
    except ValueError as error:  # an extension matplotlib cannot write
        raise DataError(f"{path}: cannot write the plot ({error})") from None
    print(f"plot: {path}", file=sys.stderr)


def export_run(directory: str, results_path: str, records: list[dict], parser: str) -> None:
    """Write one run in lmms-eval's format (lmms_export.write_lmms_eval) under `directory`."""
    scores = [score_record(record, parser) for record in records]
    config = run_config(results_path)
    written = write_lmms_eval(directory, records, scores, aggregate(records, parser), config, results_path)
    print(f"lmms_eval: {', '.join(written)}", file=sys.stderr)


def track_run(args: argparse.Namespace, name: str, results_path: str, records: list[dict]) -> None:
    """Log one run to Weights & Biases (tracking.log_run): its config, per-task scores and results table."""
    summary = summarize_run(args, results_path, records)
    config = run_config(results_path) | {"results_file": str(Path(results_path).resolve()), "parser": args.parser}
    where = log_run(args.wandb_project, name, config, summary, records, Path(results_path).resolve().parent)
    print(f"wandb: {name} logged to project {args.wandb_project} ({where})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
