"""vsibench_eval: a fast, crash-safe VSI-Bench evaluator for Qwen-VL models (docs/architecture.md).

`evaluate()` is the Python API; `vsibench-eval` and `vsibench-score` are the console commands (the same as
`python eval_qwen.py` and `python vsibench_acc.py` in a checkout). Importing this package changes nothing of its
host: no sys.path edits, and every module lives under this one name.
"""

import sys

from vsibench_eval.entry import RunFailed, evaluate, main
from vsibench_eval.errors import DataError
from vsibench_eval.settings.config import EvalConfig

__all__ = ["DataError", "EvalConfig", "RunFailed", "evaluate", "evaluate_command", "main", "score_command"]


def evaluate_command() -> None:
    """`vsibench-eval`: `python eval_qwen.py` with the same flags, from the config's defaults."""
    sys.exit(main(EvalConfig()))


def score_command() -> None:
    """`vsibench-score`: `python vsibench_acc.py` with the same arguments."""
    from vsibench_eval.scoring.report import main as score_main

    sys.exit(score_main())
