"""Tables of VSI-Bench scores: the aligned text report of one run, the comparison of two, and the markdown and
CSV tables of N runs in a published column layout, ready to paste. Also the run labels those tables show.

Formats the dicts that report.py computes; computes nothing itself.

Layouts (columns of the N-run tables):
- `spatial_r1`: Spatial-R1's published table: the 8 tasks from obj_appearance_order to object_rel_direction, then
  Overall_acc.
- `paper`: the VSI-Bench paper's Table 1 (and its leaderboard): Avg., then the numerical-answer tasks (Obj. Count,
  Abs. Dist., Obj. Size, Room Size), then the multiple-choice ones (Rel. Dist., Rel. Dir., Route Plan, Appr. Order).
"""

import csv
import io
from collections import Counter

from vsibench_eval.metric import TASKS

OVERALL = "overall"  # the column key of the macro overall
LAYOUTS = {
    "spatial_r1": [*((task, task) for task in TASKS), ("Overall_acc", OVERALL)],
    "paper": [
        ("Avg.", OVERALL),
        ("Obj. Count", "object_counting"),
        ("Abs. Dist.", "object_abs_distance"),
        ("Obj. Size", "object_size_estimation"),
        ("Room Size", "room_size_estimation"),
        ("Rel. Dist.", "object_rel_distance"),
        ("Rel. Dir.", "object_rel_direction"),
        ("Route Plan", "route_planning"),
        ("Appr. Order", "obj_appearance_order"),
    ],
}
MARKDOWN_HEADER = "| Model | " + " | ".join(TASKS) + " | Overall_acc |"  # Spatial-R1's header row, unpadded


# ---------------------------------------------------------------- one run, two runs: aligned text


def format_interval(ci: list[float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"[{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]"


def bootstrap_note(boot: dict) -> str:
    """What the 95 % intervals resampled, for a table's footer."""
    what = {"video": "whole videos within each dataset", "question": "questions within each question type"}
    return f"bootstrap of {what[boot.get('unit', 'question')]}, {boot['resamples']} resamples, seed {boot['seed']}"


def format_table(result: dict) -> str:
    """The per-task table as aligned text, tasks in the published column order; with summarize()'s keys also the
    question count per task, the 95 % intervals, the micro mean and the per-dataset scores."""
    width = max(len(t) for t in TASKS) + 2
    ci, counts = result.get("ci"), result.get("task_n")

    def line(label: str, value: float | None, bounds: list[float] | None = None, n: int | None = None) -> str:
        text = f"{label:<{width}}{'-' if value is None else f'{value:.2f}':>8}"
        text += f"{'' if n is None else n:>7}" if counts else ""
        return (text + (f"  {format_interval(bounds)}" if bounds else "")).rstrip()

    lines = [f"{'task':<{width}}{'score':>8}" + (f"{'n':>7}" if counts else "") + ("  95% CI" if ci else "")]
    extra_tasks = [task for task in result["tasks"] if task not in TASKS]
    shown = [task for task in TASKS if task in result["tasks"] or not extra_tasks] + extra_tasks
    for task in shown:
        lines.append(line(task, result["tasks"].get(task), ci and ci["tasks"].get(task), counts and counts.get(task)))
    lines.append(line("Overall (macro)", result["overall"], ci and ci["overall"], counts and result["n"]))
    if "micro" in result:
        lines.append(line("Overall (micro)", result["micro"], ci and ci.get("micro")))
    if result.get("datasets"):
        lines.append(
            f"{'dataset':<{width}}{'macro':>8}{'micro':>8}{'questions':>11}" + ("  95% CI macro, micro" if ci else "")
        )
        for name, scores in result["datasets"].items():
            text = f"{name:<{width}}{scores['overall']:>8.2f}{scores['micro']:>8.2f}{scores['n']:>11}"
            bounds = ci and ci.get("datasets", {}).get(name)
            if bounds:
                text += f"  {format_interval(bounds['overall'])} {format_interval(bounds['micro'])}"
            lines.append(text)
    lines.append(f"questions: {result['n']}, failed: {result['failed']}, parser: {result['parser']}")
    if ci:
        lines.append(f"95% CI: {bootstrap_note(result['bootstrap'])}")
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
    micro_ci = f"  {format_interval(micro['ci'], signed=True)}" if "ci" in micro else ""
    lines.append(f"{'Overall (micro)':<{width}}{micro['a']:>8.2f}{micro['b']:>8.2f}{micro['diff']:>+8.2f}{micro_ci}")
    lines.append(
        f"questions: {comparison['n']} in both runs, parser: {comparison['parser']}; paired "
        f"{bootstrap_note(comparison['bootstrap'])} (the same draws for both runs); "
        "B>A / B<A: questions scored higher in B / in A"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- N runs: markdown and CSV


def table_columns(rows: list[tuple[str, dict]], layout: str) -> list[tuple[str, str]]:
    """(header, key) of each column: the layout's, plus any other task (e.g. Video-R1's generic "numerical") before
    Overall_acc / after the last task; when no run has a VSI-Bench task, only those others and the overall."""
    seen = [task for _, result in rows for task in result["tasks"]]
    extra = [(task, task) for task in dict.fromkeys(seen) if task not in TASKS]
    tasks = [column for column in LAYOUTS[layout] if column[1] != OVERALL]
    if extra and not any(task in TASKS for task in seen):
        tasks = []
    tasks += extra
    overall = [column for column in LAYOUTS[layout] if column[1] == OVERALL]
    return overall + tasks if LAYOUTS[layout][0][1] == OVERALL else tasks + overall


def cell_value(result: dict, key: str) -> float | None:
    return result["overall"] if key == OVERALL else result["tasks"].get(key)


def best_in_column(rows: list[tuple[str, dict]], key: str) -> str | None:
    """The best score of a column as shown (2 decimals), when at least two runs have one; else None."""
    shown = [f"{value:.2f}" for _, result in rows if (value := cell_value(result, key)) is not None]
    return max(shown, key=float) if len(shown) > 1 else None


def format_markdown(rows: list[tuple[str, dict]], layout: str = "spatial_r1") -> str:
    """A markdown table, one row per (name, aggregate()) in the given order, columns in `layout`; numbers
    right-aligned, each column's best bolded (ties all bolded), "-" where a run has no questions of a task."""
    columns = table_columns(rows, layout)
    best = {key: best_in_column(rows, key) for _, key in columns}
    body = []
    for name, result in rows:
        cells = []
        for _, key in columns:
            value = cell_value(result, key)
            text = "-" if value is None else f"{value:.2f}"
            cells.append(f"**{text}**" if text == best[key] else text)
        body.append([name, *cells])
    header = ["Model", *(title for title, _ in columns)]
    overall_title = next(title for title, key in columns if key == OVERALL)
    parsers = ", ".join(sorted({result["parser"] for _, result in rows}))
    note = f"Percent; {overall_title} is the macro mean of the task scores; parser: {parsers}."
    if len(rows) > 1:
        note += " Bold: the best in each column."
    return "\n".join([*markdown_lines(header, body), "", note])


def markdown_lines(header: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table's lines: the first column left-aligned, the others right-aligned, all padded; no cell's
    text can break its row (markdown_text)."""
    header, body = [markdown_text(cell) for cell in header], [[markdown_text(cell) for cell in row] for row in body]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    align = "|" + "-" * (widths[0] + 2) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:]) + "|"
    return [line(header), align, *map(line, body)]


def format_csv(rows: list[tuple[str, dict]], layout: str = "spatial_r1") -> str:
    """The same table as CSV: scores in percent rounded to 2 decimals, empty where a run has no questions of a
    task, then each run's question count and parser."""
    columns = table_columns(rows, layout)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Model", *(csv_text(title) for title, _ in columns), "questions", "parser"])
    for name, result in rows:
        values = [cell_value(result, key) for _, key in columns]
        scores = ("" if v is None else f"{v:.2f}" for v in values)
        writer.writerow([csv_text(name), *scores, result["n"], result["parser"]])
    return out.getvalue().rstrip("\n")


def markdown_text(text: str) -> str:
    """Text as one markdown table cell: `|` escaped, line breaks made spaces (either would break the row)."""
    return " ".join(text.replace("|", "\\|").splitlines())


def csv_text(text: str) -> str:
    """A name as a CSV cell a spreadsheet shows as text: one starting with =, +, - or @ (a formula there), other
    than a number, gets a leading apostrophe."""
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


# ---------------------------------------------------------------- run labels


def distinct_labels(paths: list[list[str]], fallbacks: list[str]) -> list[str]:
    """Each run's label: the last part of its model path, with as many parts before it as it takes to tell runs of
    different checkpoints apart (".../a/checkpoint-500" and ".../b/checkpoint-500" become "a/checkpoint-500" and
    "b/checkpoint-500"); runs of the same checkpoint get their fallback (the run folder) in brackets."""
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(parts[-d:]) for parts, d in zip(paths, depth, strict=True)]
        counts = Counter(labels)
        grow = [i for i, label in enumerate(labels) if counts[label] > 1 and depth[i] < len(paths[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    return [
        f"{label} ({fallback})" if counts[label] > 1 else label
        for label, fallback in zip(labels, fallbacks, strict=True)
    ]
