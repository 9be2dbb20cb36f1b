"""This project's video module (decoding, frame sampling, resizing) and M-RoPE positions, under the name the
design card gives it. The code is vsibench_eval/inputs/frames.py and vsibench_eval/model/positions.py; this
file re-exports both. It shadows the PyPI package `qwen-vl-utils` in a checkout; the project does not use that
package, and an installed copy puts nothing at this top-level name.
"""

from vsibench_eval.inputs.frames import *  # noqa: F403
from vsibench_eval.model.positions import *  # noqa: F403
