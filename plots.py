"""Figures of VSI-Bench scores: per-task bars with 95 % intervals, one bar per run.

Imports vsibench_acc (the task order); matplotlib is imported when a figure is drawn.
"""

import numpy as np

from vsibench_acc import TASKS


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
