"""The model families the evaluator accepts."""

# The model types (config.json's model_type) the evaluator accepts: every Qwen-VL family of transformers 5.24. The
# Qwen3-VL-style ones write each temporal grid of a video as its own block after a timestamp text. The Omni models'
# thinkers, which AutoModelForImageTextToText loads too, take audio, with other processors and position rules, and
# are not among them.
FRAME_BLOCK_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "qwen4_exp")


QWEN_VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", *FRAME_BLOCK_MODEL_TYPES)


def patch_factor(model_type: str) -> int:
    """Pixels per side of one merged patch (patch size x merge size): frames' sides are multiples of it."""
    return 32 if model_type in FRAME_BLOCK_MODEL_TYPES else 28
