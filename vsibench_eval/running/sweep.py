"""Sweeps: several checkpoints (`--model_name A B C`, or a quoted glob such as 'runs/*/checkpoint-*') evaluated one
after another with the same data and settings, then one table of all runs, printed and written beside their
run directories.

The questions are selected once for the whole sweep; each checkpoint is one ordinary run (its own run directory,
config.json with its one model_name, log and summary; `--resume` continues it alone). Every checkpoint is resolved
(a local folder read, a Hub id downloaded) before the first is evaluated, so a typo is found at once.
"""

import copy
import glob
import json
import os
import re
import sys
from datetime import datetime
from pathlib import Path

from vsibench_eval.errors import DataError
from vsibench_eval.model.hub import is_hub_id
from vsibench_eval.running.launch import run_command
from vsibench_eval.running.prepare import check_video_dir, find_data, resolve_model, select_questions
from vsibench_eval.scoring.references import csv_with_references, load_references, reference_section
from vsibench_eval.scoring.tables import distinct_labels, format_csv, format_markdown
from vsibench_eval.settings.config import EvalConfig

GLOB_CHARACTERS = frozenset("*?[")
TABLE_LAYOUT = "spatial_r1"  # model name, the 8 tasks, Overall_acc (tables.LAYOUTS)


def has_glob(name: str) -> bool:
    return bool(GLOB_CHARACTERS & set(name))


def is_sweep(model_name: str | list[str]) -> bool:
    """Does model_name ask for several runs: several names, or a glob pattern (even one that matches one folder)?"""
    names = [model_name] if isinstance(model_name, str) else model_name
    return len(names) > 1 or any(has_glob(name) for name in names)


def natural_key(path: str) -> list:
    """Order checkpoint-500 before checkpoint-1000: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def model_names(model_name: str | list[str]) -> list[str]:
    """The checkpoints to evaluate, in order: each name as given, each glob pattern replaced by the folders it
    matches (in natural order); a checkpoint named twice is evaluated once. DataError when a pattern matches no
    folder or no name is given."""
    names = []
    for name in [model_name] if isinstance(model_name, str) else model_name:
        if not has_glob(name):
            names.append(name)
            continue
        matches = sorted((m for m in glob.glob(os.path.expanduser(name)) if os.path.isdir(m)), key=natural_key)
        if not matches:
            raise DataError(f"model_name: {name}: the pattern matches no folder")
        names += matches
    if not names:
        raise DataError("model_name: no checkpoint given")
    unique = {}  # the first mention of each checkpoint
    for name in names:
        unique.setdefault(name if is_hub_id(name) else os.path.abspath(name), name)
    return list(unique.values())


def checkpoint_labels(names: list[str]) -> list[str]:
    """Each checkpoint's name in the table: its last path part, with as many parts before it as it takes to tell
    it from the others (runA/checkpoint-500, runB/checkpoint-500); Hub ids as org/name parts."""
    parts = [name.split("/") if is_hub_id(name) else Path(os.path.abspath(name)).parts[1:] for name in names]
    return distinct_labels([list(p) for p in parts], [""] * len(names))


def run_sweep(config: EvalConfig, given: set[str], models: list[str]) -> int:
    """Evaluate each checkpoint in turn, then print and write the table of all runs. The exit status: 0 when every
    checkpoint has a complete run; otherwise that of the first checkpoint that failed (2: its checkpoint or
    settings were refused, 1: a worker or a write failed, so some questions have no result). The other
    checkpoints are still evaluated, except after a stop signal (Ctrl-C, SIGTERM), which ends the sweep with
    128 + the signal's number."""
    try:
        if config.resume:
            raise DataError("resume: continues one run; give the run directory of one checkpoint of the sweep")
        if config.run_dir:
            raise DataError("run_dir: a sweep makes one run directory per checkpoint under output_dir_base")
        base = find_data(copy.deepcopy(config), given)
        check_video_dir(base)
        selected = select_questions(base)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    labels = checkpoint_labels(models)
    say(f"{len(models)} checkpoints, {len(selected[0])} questions each ({selected[1]})")
    members, outcomes = [], [None] * len(models)  # outcome: {"status", and "run_dir" or "why"}; None: not run
    for number, model in enumerate(models):
        member = copy.deepcopy(base)
        member.model_name = model
        try:
            members.append((member, resolve_model(member)))
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            members.append((member, None))
            outcomes[number] = {"status": 2, "why": str(error)}
    for number, ((member, model_type), label) in enumerate(zip(members, labels, strict=True)):
        if model_type is None:
            continue
        say(f"{number + 1} of {len(models)}: {member.model_name}")
        folder = label.replace("/", "--")
        status, run_dir = run_command(member, given, selected=selected, model_type=model_type, folder=folder)
        outcomes[number] = {"status": status, "run_dir": run_dir and str(run_dir)}
        if status > 128:  # a stop signal stops the sweep, not only this checkpoint
            break
    report_sweep(base, labels, outcomes)
    failed = [outcome["status"] for outcome in outcomes if outcome and outcome["status"]]
    return failed[0] if failed else 0


def say(message: str) -> None:
    print(f"sweep: {message}", file=sys.stderr, flush=True)


def report_sweep(config: EvalConfig, labels: list[str], outcomes: list[dict | None]) -> None:
    """Print the table of every run that has a summary (tables.format_markdown, Spatial-R1's columns), the run
    directories and the failures, and write them to {output_dir_base}/sweep_{YYYYmmdd_HHMMSS}.md and .csv."""
    rows, lines = [], []
    for label, outcome in zip(labels, outcomes, strict=True):
        if outcome is None:
            lines.append(f"- {label}: not evaluated (the sweep was stopped)")
            continue
        summary_file = Path(outcome["run_dir"]) / "summary.json" if outcome.get("run_dir") else None
        if summary_file and summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            rows.append((label if summary["complete"] else f"{label} (incomplete)", summary))
        where = outcome.get("run_dir") or outcome.get("why", "")
        status = f"exit status {outcome['status']}: " if outcome["status"] else ""
        lines.append(f"- {label}: {status}{where}")
    table = format_markdown(rows, TABLE_LAYOUT) if rows else "(no run finished)"
    published = [(label, summary, summary.get("protocol")) for label, summary in rows]
    if config.reference and rows:
        table += "\n\n" + reference_section(published, load_references(), TABLE_LAYOUT)
    text = f"{table}\n\nRuns:\n" + "\n".join(lines) + "\n"
    out = Path(config.output_dir_base)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"sweep_{stamp}.md").write_text(text)
        if rows:
            if config.reference:
                table_csv = csv_with_references(published, load_references(), TABLE_LAYOUT)
            else:
                table_csv = format_csv(rows, TABLE_LAYOUT)
            (out / f"sweep_{stamp}.csv").write_text(table_csv + "\n")
        written = f"written to {out / f'sweep_{stamp}.md'}" + (" and .csv" if rows else "")
    except OSError as error:
        written = f"cannot write it into {out}: {error.strerror or error}"
    print(f"\nSweep of {len(labels)} checkpoints (accuracy, %):\n{text}\nThe table is {written}", flush=True)
