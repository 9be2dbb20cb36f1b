"""The installed form of this project, and its console commands `vsibench-eval` and `vsibench-score`.

`pip install .` puts the project's modules (eval_qwen.py, qwen_vl_utils.py, ...) in vsibench_eval/modules/,
not at the top level of site-packages, so the local qwen_vl_utils never hides the PyPI package of that name
from other programs. Importing this package puts that folder (in a checkout: the project's root) first on
sys.path, so inside such a process `import qwen_vl_utils` gives this project's module.
"""

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
MODULES = _here / "modules" if (_here / "modules").is_dir() else _here.parent  # installed, or a checkout
if str(MODULES) not in sys.path:
    sys.path.insert(0, str(MODULES))


def evaluate_command() -> None:
    """`vsibench-eval`: `python eval_qwen.py` with the same flags, from the config's defaults."""
    import eval_qwen

    sys.exit(eval_qwen.main(eval_qwen.EvalConfig()))


def score_command() -> None:
    """`vsibench-score`: `python vsibench_acc.py` with the same arguments."""
    import report

    sys.exit(report.main())


def evaluate(model=None, processor=None, **config) -> dict:
    """eval_qwen.evaluate (the Python API, README "From Python"), importable from an installed copy."""
    import eval_qwen

    return eval_qwen.evaluate(model, processor, **config)
