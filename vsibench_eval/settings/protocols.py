"""Evaluation protocols: for each reference evaluator, the value of every setting that changes scores, in one
table, so that one flag (`--protocol NAME`) evaluates the way that reference did.

A protocol is a base row plus, where the reference treats model families differently, a row per model type
with the fields that differ. A config field left unset (None) takes the protocol's value; a field set in the
config or on the command line keeps its own value, and the log lists it as a deviation from the protocol.
`none` is the evaluator's own defaults and reports no deviations.

docs/protocols.md's table cites, for every cell, the reference file and line the value comes from.
"""

import math
from dataclasses import dataclass, field

from vsibench_eval.errors import DataError

# Every config field that changes what the model sees, how it decodes or how its answer is read, in the
# order the log and summary.json list them.
SCORE_SETTINGS = (
    "prompt_format",  # the prompt's structure: Spatial-R1's ("Question:\n...") or the official VSI-Bench task's
    "prompt_type",  # the wording within it: default, thinking, gemini_api, gpt4v, custom (official: legacy)
    "system_prompt",  # the system message, or "none": none sent, the chat template's default applies
    "num_frames",  # frames asked for
    "fps",  # > 0 caps the count at whole seconds x fps
    "frame_count",  # exact | even | even_within_video: how the count is adjusted (inputs/frames.py frame_count)
    "frame_index_rounding",  # floor | round: how linspace positions become frame indices
    "resize",  # fit | spatial_r1 | smart_resize (inputs/frames.py resize_frames)
    "target_resolution",  # fit: the box frames fit in; spatial_r1: its larger side caps the longer side
    "min_pixels",  # smart_resize: fewest pixels per frame (0: 128 x factor^2)
    "max_pixels",  # smart_resize: most pixels per frame (0: only the 768 x factor^2 and total_pixels caps)
    "total_pixels",  # smart_resize: pixel budget of the whole video (0: none)
    "video_input",  # video | images: the frames as one video, or one image per frame
    "max_new_tokens",
    "repetition_penalty",  # a number, or "checkpoint": its generation_config.json value
    "eos_tokens",  # checkpoint (generation_config.json's eos ids) | tokenizer (its single eos token)
    "answer_span",  # none | first | last: which <answer>...</answer> span is scored
    "position_fps",  # Qwen2.5-VL time code: a number, "sampled" (real spacing) or "metadata" (transformers' own)
    "mrope_positions",  # published (the Qwen team's rule) | transformers (the installed release's)
    "cogmap_prompt",  # evaluator | spatial_r1: the prompt asking the model for a cognitive map
    "cogmap_insert",  # evaluator | spatial_r1: how a map enters the question
    "cogmap_max_new_tokens",
)

# The evaluator's own defaults: protocol `none`, and the base every other protocol overrides.
EVALUATOR_DEFAULTS = {
    "prompt_format": "spatial_r1",
    "prompt_type": "default",
    "system_prompt": "none",
    "num_frames": 32,
    "fps": 1.0,
    "frame_count": "exact",
    "frame_index_rounding": "floor",
    "resize": "fit",
    "target_resolution": [448, 448],
    "min_pixels": 0,
    "max_pixels": 0,
    "total_pixels": 0,
    "video_input": "video",
    "max_new_tokens": 512,
    "repetition_penalty": "checkpoint",
    "eos_tokens": "checkpoint",
    "answer_span": "last",
    "position_fps": "2.0",
    "mrope_positions": "published",
    "cogmap_prompt": "evaluator",
    "cogmap_insert": "evaluator",
    "cogmap_max_new_tokens": 512,
}


@dataclass(frozen=True)
class Protocol:
    name: str
    reference: str  # what the protocol reproduces, and which published numbers it matches
    settings: dict  # every field of SCORE_SETTINGS
    families: dict = field(default_factory=dict)  # model_type -> the fields that differ for it
    covers: tuple = ()  # the model types the reference itself defines settings for (empty: all)


NONE = Protocol("none", "every setting as configured; unset ones take the evaluator's defaults", EVALUATOR_DEFAULTS)

# The original Spatial-R1 script (github OuyangKun10/SpaceR, eval_qwen.py, commit 6ef4a21), which produced the
# Spatial-R1 table. Its resize swapped width and height (a defect, kept here only to reproduce that table).
SPATIAL_R1 = Protocol(
    "spatial_r1",
    "the original Spatial-R1 script (SpaceR eval_qwen.py @6ef4a21), swapped-size resize included; "
    "matches the Spatial-R1 table (Qwen2.5-VL-7B zero-shot / CoT, Spatial-R1)",
    EVALUATOR_DEFAULTS
    | {
        "resize": "spatial_r1",
        "answer_span": "first",
        "cogmap_prompt": "spatial_r1",
        "cogmap_insert": "spatial_r1",
        "cogmap_max_new_tokens": 256,
    },
    covers=("qwen2_5_vl",),
)

# The official VSI-Bench code (github vision-x-nyu/thinking-in-space, lmms_eval/models/qwen2vl.py through vLLM,
# tasks/vsibench), with the qwen-vl-utils of its time (0.0.8).
VSIBENCH_OFFICIAL = Protocol(
    "vsibench_official",
    "the official VSI-Bench code (thinking-in-space, qwen2vl model with qwen-vl-utils 0.0.8); "
    "matches runs of the official code (the VSI-Bench paper's table, EASI's official-code Qwen2.5-VL rows)",
    EVALUATOR_DEFAULTS
    | {
        "prompt_format": "vsibench",
        "fps": 0.0,
        "frame_count": "even",
        "frame_index_rounding": "round",
        "resize": "smart_resize",
        "min_pixels": 128 * 28 * 28,
        "total_pixels": 24576 * 28 * 28,
        "max_new_tokens": 64,
        "repetition_penalty": "1.0",
        "answer_span": "none",
    },
    covers=("qwen2_vl", "qwen2_5_vl"),
)

# lmms-eval 0.7.3's vsibench task with its qwen2_5_vl / qwen3_vl chat models (qwen-vl-utils 0.0.14).
LMMS_EVAL_QWEN3_VL = {
    "system_prompt": "You are a helpful assistant.",
    "frame_count": "even",
    "total_pixels": int(128000 * 32 * 32 * 0.9),
}
LMMS_EVAL = Protocol(
    "lmms_eval",
    "lmms-eval 0.7.3, task vsibench, models qwen2_5_vl / qwen3_vl with their defaults; "
    "matches tables made with lmms-eval (its lenient numerical parser aside)",
    EVALUATOR_DEFAULTS
    | {
        "prompt_format": "vsibench",
        "fps": 0.0,
        "frame_count": "even_within_video",
        "frame_index_rounding": "round",
        "resize": "smart_resize",
        "min_pixels": 256 * 28 * 28,
        "max_pixels": 1605632,
        "total_pixels": int(128000 * 28 * 28 * 0.9),
        "max_new_tokens": 16,
        "eos_tokens": "tokenizer",
        "answer_span": "none",
        "position_fps": "metadata",
        "mrope_positions": "transformers",
    },
    # lmms-eval's qwen3_vl model class also serves Qwen3.5 (models/simple/qwen3_vl.py:60-69), so a qwen3_5 row
    # is this same dict.
    families={"qwen3_vl": LMMS_EVAL_QWEN3_VL, "qwen3_vl_moe": LMMS_EVAL_QWEN3_VL},
    covers=("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"),
)

PROTOCOLS = {protocol.name: protocol for protocol in (NONE, SPATIAL_R1, VSIBENCH_OFFICIAL, LMMS_EVAL)}

# The values a setting may take (numbers and free text are checked in check_settings).
CHOICES = {
    "prompt_format": ("spatial_r1", "vsibench"),
    "frame_count": ("exact", "even", "even_within_video"),
    "frame_index_rounding": ("floor", "round"),
    "resize": ("fit", "spatial_r1", "smart_resize"),
    "video_input": ("video", "images"),
    "eos_tokens": ("checkpoint", "tokenizer"),
    "answer_span": ("none", "first", "last"),
    "mrope_positions": ("published", "transformers"),
    "cogmap_prompt": ("evaluator", "spatial_r1"),
    "cogmap_insert": ("evaluator", "spatial_r1"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise DataError(f"protocol: unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_settings(name: str, model_type: str) -> dict:
    """Every score-changing setting of protocol `name` for a model of `model_type`."""
    protocol = get_protocol(name)
    return protocol.settings | protocol.families.get(model_type, {})


def apply_protocol(config, model_type: str) -> None:
    """Give every unset (None) score-changing field of `config` the protocol's value for this model type."""
    for name, value in protocol_settings(config.protocol, model_type).items():
        if getattr(config, name) is None:
            setattr(config, name, list(value) if isinstance(value, list) else value)


def deviations(config, model_type: str) -> dict[str, tuple]:
    """{field: (the run's value, the protocol's value)} for each setting that differs from the protocol."""
    if config.protocol == "none":
        return {}
    expected = protocol_settings(config.protocol, model_type)
    return {name: (getattr(config, name), value) for name, value in expected.items() if getattr(config, name) != value}


def effective_settings(config) -> dict:
    """The value in force of every score-changing setting, for summary.json."""
    return {name: getattr(config, name) for name in SCORE_SETTINGS}


def describe(config, model_type: str) -> list[str]:
    """Log lines: the protocol, which reference it follows, for which model type, and every deviation."""
    protocol = get_protocol(config.protocol)
    lines = [f"protocol {protocol.name}: {protocol.reference}; model type {model_type}"]
    if protocol.covers and model_type not in protocol.covers:
        lines.append(
            f"protocol {protocol.name}: the reference defines settings for {', '.join(protocol.covers)} only; "
            f"its base row applies to {model_type}, frames sized with this model's own patch size"
        )
    differing = deviations(config, model_type)
    if differing:
        listed = "; ".join(f"{name} {ours!r} (protocol: {theirs!r})" for name, (ours, theirs) in differing.items())
        lines.append(f"settings that deviate from protocol {protocol.name}: {listed}")
    elif protocol.name != "none":
        lines.append(f"no setting deviates from protocol {protocol.name}")
    if config.prompt_type == "thinking" and config.max_new_tokens < 128:
        lines.append(
            f"prompt_type thinking with max_new_tokens {config.max_new_tokens}: reasoning is cut off before its "
            "answer; raise --max_new_tokens"
        )
    return lines


def check_settings(config) -> None:
    """Reject score-changing settings that cannot work (after the protocol has filled them in)."""
    for name, choices in CHOICES.items():
        if getattr(config, name) not in choices:
            raise DataError(f"{name}: expected one of {', '.join(choices)}, got {getattr(config, name)!r}")
    for name in ("min_pixels", "max_pixels", "total_pixels"):
        if getattr(config, name) < 0:
            raise DataError(f"{name}: must be 0 (none) or positive, got {getattr(config, name)}")
    if not (math.isfinite(config.fps) and config.fps >= 0):
        raise DataError(f"fps: expected a number >= 0 (0: no cap), got {config.fps}")
    penalty = config.repetition_penalty
    if penalty != "checkpoint" and not is_positive_number(penalty):
        raise DataError(f"repetition_penalty: expected a positive number or 'checkpoint', got {penalty!r}")
    if config.position_fps not in ("sampled", "metadata") and not is_positive_number(config.position_fps):
        raise DataError(
            f"position_fps: expected a positive number, 'sampled' or 'metadata', got {config.position_fps!r}"
        )


def is_positive_number(text: str) -> bool:
    """A finite number > 0 written as text ("inf" and "nan" are not)."""
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False
