"""Figures of VSI-Bench scores, drawn so that a reader reaches the conclusion the statistics support.

- plot_scores: per task, one horizontal bar per run with its 95 % bootstrap interval, the value written beside
  it, the question count in the row label, the chance level of multiple-choice tasks, and the overall score set
  apart below the tasks.
- plot_comparison: B - A per task and overall with the paired 95 % interval, a zero line, and the rows whose
  interval excludes 0 marked (left panel); each run's own bars beside it (right panel). Overlapping per-run
  intervals do not mean "no difference": the left panel shows what the paired test says.

matplotlib is imported when a figure is drawn.
"""

from pathlib import Path

import numpy as np

from vsibench_eval.errors import DataError
from vsibench_eval.metric import TASKS
from vsibench_eval.scoring.tables import bootstrap_note

OVERALL_LABEL = "Overall (macro)"
GAP = 0.7  # extra space between the last task row and the overall row
RUN_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
BETTER, WORSE, UNSURE = "tab:green", "tab:red", "tab:gray"


def check_plot_path(path: str) -> None:
    """Refuse, before any work is done, a plot file matplotlib cannot write: no extension, a format it does not
    know, or a folder that does not exist."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise DataError("--plot needs matplotlib: pip install matplotlib") from None
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = Path(path).suffix.lower().lstrip(".")
    if extension not in formats:
        said = f"unknown extension '.{extension}'" if extension else "no extension"
        raise DataError(f"{path}: {said}; a plot can be written as {', '.join('.' + f for f in sorted(formats))}")
    if not Path(path).resolve().parent.is_dir():
        raise DataError(f"{path}: cannot write the plot (no such directory {Path(path).resolve().parent})")


# ---------------------------------------------------------------- rows


def shown_tasks(results: list[dict]) -> list[str]:
    """The tasks any run has, VSI-Bench's in the published order, then any other question type."""
    seen = {task for result in results for task in result["tasks"]}
    extra = [task for result in results for task in result["tasks"] if task not in TASKS]
    return [task for task in TASKS if task in seen] + list(dict.fromkeys(extra))


def row_positions(count: int) -> np.ndarray:
    """y of each task row, then of the overall row after a gap (the axis is inverted: the first task on top)."""
    return np.append(np.arange(count, dtype=float), count + GAP)


def row_labels(tasks: list[str], results: list[dict]) -> list[str]:
    """Each row's label with its question count ("n=40"; "n=40/38" when the runs differ)."""

    def counts(key: str | None) -> str:
        values = [result["n"] if key is None else result.get("task_n", {}).get(key) for result in results]
        return "/".join(str(v) for v in dict.fromkeys(v for v in values if v is not None))

    return [f"{task}  (n={counts(task)})" for task in tasks] + [f"{OVERALL_LABEL}  (n={counts(None)})"]


def difference_rows(comparison: dict) -> list[dict]:
    """Per task and overall: B - A, its paired 95 % interval, and whether the interval excludes 0."""
    rows = [*comparison["tasks"].items(), (OVERALL_LABEL, comparison["overall"])]
    return [
        {"label": label, "diff": row["diff"], "low": row["ci"][0], "high": row["ci"][1],
         "excludes_zero": row["ci"][0] > 0 or row["ci"][1] < 0}
        for label, row in rows
    ]  # fmt: skip


# ---------------------------------------------------------------- drawing


def separate_overall(axes, y: np.ndarray, bold_label: bool = True) -> None:
    """A line and a shaded band set the overall row apart from the tasks; its label is bold."""
    if len(y) > 1:
        axes.axhline((y[-2] + y[-1]) / 2, color="black", linewidth=0.8)
    axes.axhspan(y[-1] - 0.5, y[-1] + 0.5, color="0.93", zorder=0)
    if bold_label:
        axes.get_yticklabels()[-1].set_fontweight("bold")


def draw_bars(axes, tasks: list[str], y: np.ndarray, runs: list[tuple[str, dict]]) -> None:
    """Per row one bar per run, its 95 % interval as a black line, its value beside it, and a dashed tick at the
    chance level of a multiple-choice task."""
    height = 0.8 / len(runs)
    for index, (name, result) in enumerate(runs):
        offsets = y + (index - (len(runs) - 1) / 2) * height
        values = [result["tasks"].get(task) for task in tasks] + [result["overall"]]
        intervals = [result["ci"]["tasks"].get(task) for task in tasks] + [result["ci"]["overall"]]
        color = RUN_COLORS[index % len(RUN_COLORS)]
        for row, (at, value, bounds) in enumerate(zip(offsets, values, intervals, strict=True)):
            if value is None:
                continue
            axes.barh(at, value, height * 0.9, color=color, label=name if row == 0 else None)
            axes.plot(bounds, [at, at], color="black", linewidth=1.2, marker="|", markersize=7)
            axes.text(max(value, bounds[1]) + 1, at, f"{value:.2f}", va="center", fontsize=8)
            chance = result.get("chance", {}).get(tasks[row]) if row < len(tasks) else None
            if chance is not None:
                axes.vlines(chance, at - height * 0.5, at + height * 0.5, color="black", linestyles="--")
    axes.set_xlim(0, 112)
    axes.set_xticks(range(0, 101, 20))
    axes.set_xlabel("score (%)")
    axes.grid(axis="x", alpha=0.3)


def chance_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], color="black", linestyle="--", label="chance level (1 / options)")


def plot_scores(path: str, runs: list[tuple[str, dict]]) -> None:
    """Per-task scores of one or more runs from (name, summarize()) pairs; written to `path`."""
    from matplotlib.figure import Figure  # imported here so scoring works without matplotlib

    results = [result for _, result in runs]
    tasks = shown_tasks(results)
    y = row_positions(len(tasks))
    figure = Figure(figsize=(10, 1.8 + 0.32 * (len(tasks) + 1) * max(2, len(runs))), layout="constrained")
    axes = figure.add_subplot()
    draw_bars(axes, tasks, y, runs)
    axes.set_yticks(y, row_labels(tasks, results))
    axes.set_ylim(y[-1] + 0.6, -0.6)  # inverted: the first task on top, the overall at the bottom
    separate_overall(axes, y)
    axes.set_title(
        f"VSI-Bench per task, {results[0]['parser']} parser\nblack lines: 95% interval, "
        f"{bootstrap_note(results[0]['bootstrap'])}",
        fontsize=10,
    )
    handles, _ = axes.get_legend_handles_labels()
    if any(result.get("chance") for result in results):
        handles.append(chance_handle())
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=9)
    figure.savefig(path, dpi=120)


def plot_comparison(path: str, comparison: dict, runs: list[tuple[str, dict]]) -> None:
    """B - A per task and overall with paired 95 % intervals (left), each run's scores (right); `runs` are
    (name, summarize()) of A and of B on the questions they share."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = difference_rows(comparison)
    tasks = [row["label"] for row in rows[:-1]]
    y = row_positions(len(tasks))
    figure = Figure(figsize=(15, 2.4 + 0.62 * len(rows)), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True, width_ratios=[1.15, 1])
    for at, row in zip(y, rows, strict=True):
        color = BETTER if row["low"] > 0 else WORSE if row["high"] < 0 else UNSURE  # the interval's side, as the test
        left.hlines(at, row["low"], row["high"], color=color, linewidth=2.5)
        face = color if row["excludes_zero"] else "white"
        left.plot(row["diff"], at, "o", markersize=8, markerfacecolor=face, markeredgecolor=color, markeredgewidth=2)
    left.axvline(0, color="black", linewidth=1)
    reach = max(1.0, *(max(abs(row["low"]), abs(row["high"]), abs(row["diff"])) for row in rows))
    left.set_xlim(-1.15 * reach, 1.15 * reach)
    left.set_yticks(y, row_labels(tasks, [result for _, result in runs]))
    left.set_ylim(y[-1] + 0.6, -0.6)
    separate_overall(left, y)
    left.set_xlabel("B - A (percentage points)")
    left.grid(axis="x", alpha=0.3)
    differences = left.secondary_yaxis("right")
    differences.set_yticks(
        y,
        [f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]{' *' if r['excludes_zero'] else ''}" for r in rows],
        fontsize=9,
    )
    (a_name, _), (b_name, _) = runs
    left.set_title(f"B - A with its paired 95% interval\nB: {b_name}    A: {a_name}", fontsize=10)
    marks = [
        Line2D([], [], color=BETTER, marker="o", label="* B better: interval above 0"),
        Line2D([], [], color=WORSE, marker="o", label="* A better: interval below 0"),
        Line2D([], [], color=UNSURE, marker="o", markerfacecolor="white", label="interval includes 0"),
    ]

    draw_bars(right, tasks, y, runs)
    right.tick_params(labelleft=False)
    separate_overall(right, y, bold_label=False)
    right.set_title("Each run's score with its own 95% bootstrap interval", fontsize=10)
    handles, _ = right.get_legend_handles_labels()
    figure.legend(handles=[*marks, *handles, chance_handle()], loc="outside lower center", ncols=3, fontsize=9)
    figure.suptitle(
        f"VSI-Bench, {comparison['parser']} parser, {comparison['n']} questions in both runs; paired "
        f"{bootstrap_note(comparison['bootstrap'])}: the same draws for both runs",
        fontsize=11,
    )
    figure.savefig(path, dpi=120)
