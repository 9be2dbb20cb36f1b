"""Optional experiment tracking with Weights & Biases: a run's config, per-task scores and results table.

wandb is imported only when a run is logged, and is not a requirement of the project
(`pip install wandb`). WANDB_MODE=offline writes the run under {directory}/wandb/ for a later `wandb sync`.

What a logged run holds: its config (the run's config.json, or what the scorer knows), the scores as summary
values (`vsibench/overall`, `vsibench/micro`, `vsibench/{task}`), a `scores` table (task, score, 95 % interval,
questions) and a `results` table (one row per question: id, type, ground truth, prediction, scores, error).
"""

import os
from pathlib import Path

from vsibench_eval.errors import DataError

INSTALL_HINT = "--wandb_project needs wandb, which is not installed: pip install wandb"
RESULT_COLUMNS = (
    "id", "dataset", "scene_name", "question_type", "ground_truth", "prediction", "answer", "score", "score_lenient",
    "error",
)  # fmt: skip


def require_wandb():
    """The wandb module; DataError with the install hint when it is missing."""
    try:
        import wandb
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    return wandb


def score_rows(summary: dict) -> list[list]:
    """The `scores` table: per task and overall, the score, its 95 % interval and the question count (percent)."""
    rows = []
    for task, score in summary["tasks"].items():
        low, high = summary["ci"]["tasks"][task]
        rows.append([task, score, low, high, summary["task_n"][task]])
    low, high = summary["ci"]["overall"]
    return [*rows, ["overall (macro)", summary["overall"], low, high, summary["n"]]]


def result_rows(records: list[dict]) -> list[list]:
    """The `results` table: one row per question; nested values (options) are left out, missing ones are None."""
    return [[record.get(column) for column in RESULT_COLUMNS] for record in records]


def log_run(project: str, name: str, config: dict, summary: dict, records: list[dict], directory: Path) -> str:
    """Log one scored run (summary: report.summarize()) to `project`; returns where wandb keeps the run's files.
    Any wandb failure (no login, no network when online) becomes a DataError."""
    wandb = require_wandb()
    scores = {f"vsibench/{task}": value for task, value in summary["tasks"].items()}
    scores |= {"vsibench/overall": summary["overall"], "vsibench/micro": summary["micro"]}
    try:
        run = wandb.init(
            project=project,
            name=name,
            config=config,
            dir=os.environ.get("WANDB_DIR", str(directory)),
            job_type="eval",
            settings=wandb.Settings(silent=True, console="off"),
        )
        run.log(
            scores
            | {
                "scores": wandb.Table(
                    columns=["task", "score", "ci_low", "ci_high", "questions"], data=score_rows(summary)
                ),
                "results": wandb.Table(columns=list(RESULT_COLUMNS), data=result_rows(records)),
            }
        )
        where = run.dir
        run.finish()
    except Exception as error:  # wandb raises its own error types, and OSError, for setup and network failures
        raise DataError(f"wandb: {type(error).__name__}: {error}") from None
    return str(Path(where).parent)
