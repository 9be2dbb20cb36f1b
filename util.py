"""Question records and the evaluator's shared names, as one module: re-exported from the package
(vsibench_eval/inputs/questions.py, errors.py, metric.py, model/families.py) so that `import util` keeps working.
"""

from vsibench_eval.errors import DataError  # noqa: F401
from vsibench_eval.inputs.questions import *  # noqa: F403
from vsibench_eval.metric import MCA_QUESTION_TYPES, NA_QUESTION_TYPES, extract_answer  # noqa: F401
from vsibench_eval.model.families import FRAME_BLOCK_MODEL_TYPES, QWEN_VL_MODEL_TYPES  # noqa: F401
