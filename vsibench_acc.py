"""The official VSI-Bench metric and its command line.

The metric itself is vsibench_eval/metric.py (readable alone, side by side with the official utils.py); this
file re-exports it so that `import vsibench_acc` keeps working, and runs the scoring command line:

    python vsibench_acc.py RESULTS.jsonl [--json] [--stats] [--parser lenient] [--compare B.jsonl] [--markdown]
"""

import sys

from vsibench_eval.metric import *  # noqa: F403

if __name__ == "__main__":
    from vsibench_eval.scoring.report import main

    sys.exit(main())
