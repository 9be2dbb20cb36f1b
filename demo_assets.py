"""Build the demo and test assets locally: tiny random Qwen-VL checkpoints and a small VSI-Bench-shaped set.

No model hub is reachable where this project runs, so the checkpoints are built from scratch: a byte-level
BPE trained on VSI-Bench-like prompts, Qwen's special tokens and chat templates, and a tiny random model
with the real families' patch geometry. A checkpoint saved by one transformers major may not load in
another, so `ensure_demo` rebuilds it when the installed major changes.
"""

import json
import os
import pathlib
import shutil
import tempfile

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

MARKER = "demo_build.json"

# The special tokens Qwen-VL processors and chat templates use; Qwen3-VL needs no others.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

HEAD_DIM = 16  # text attention head size; every family's `mrope_section` below sums to HEAD_DIM / 2

# Weight std of the random models. At the usual 0.02 attention is nearly uniform and tiny next to the
# embeddings, so greedy decoding ignores the prompt and the video; at 0.2 both change the output.
INIT_STD = 0.2

# The per-family pieces. Vision towers are tiny but keep the real patch, merge and temporal sizes, so
# grids and token counts match the real models. `mrope_section` sums to head_dim / 2 = 8.
FAMILY_SPECS = {
    "qwen2_vl": {
        "processor": "Qwen2VLProcessor",
        "video_processor": "Qwen2VLVideoProcessor",
        "patch_size": 14,
        "default_system": True,
        "pixel_mean_std": None,  # the processors' CLIP defaults, as in the real checkpoint
        "video_size": None,  # the same per-frame limits as images
        "text": {"rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
        # Qwen2-VL calls the tower's width embed_dim and its output (the text width) hidden_size.
        "vision_output": "hidden_size",  # the vision config key that must equal the text width
        "vision": {"embed_dim": 32, "num_heads": 2, "mlp_ratio": 2},
    },
    "qwen2_5_vl": {
        "processor": "Qwen2_5_VLProcessor",
        "video_processor": "Qwen2VLVideoProcessor",
        "patch_size": 14,
        "default_system": True,
        "pixel_mean_std": None,
        "video_size": None,
        "text": {"rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
        "vision_output": "out_hidden_size",
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,  # as in the real 7B config
        },
    },
    "qwen3_vl": {
        "processor": "Qwen3VLProcessor",
        "video_processor": "Qwen3VLVideoProcessor",
        "patch_size": 16,
        "default_system": False,  # Qwen3-VL's template has no default system message
        "pixel_mean_std": [0.5, 0.5, 0.5],
        # Its video limits count the pixels of all frames together; these are the real checkpoint's.
        "video_size": {"shortest_edge": 4096, "longest_edge": 768 * 32 * 32 * 32},
        "text": {
            "head_dim": HEAD_DIM,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        },
        "vision_output": "out_hidden_size",
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "num_position_embeddings": 144,  # a 12 x 12 learned grid, interpolated to each frame
            "deepstack_visual_indexes": [0],
        },
    },
}

# The scenes of the demo set: (dataset, scene_name, width, height, seconds), names in each source's style.
# One runs over 32 s and one under 10 s, so frame sampling sees both cases.
DEMO_SCENES = (
    ("arkitscenes", "41069025", 160, 120, 36),
    ("scannet", "scene0011_00", 128, 96, 8),
    ("scannetpp", "0a5c013435", 144, 108, 20),
    ("arkitscenes", "42445173", 160, 120, 14),
)
DEMO_FPS = 10

OBJECTS = (
    "chair", "table", "sofa", "tv", "door", "bed", "lamp", "window", "sink", "refrigerator",
    "stool", "cabinet", "desk", "monitor", "trash can", "pillow", "toilet", "stove",
)  # fmt: skip

PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("dataset", pa.string()),
        ("scene_name", pa.string()),
        ("question_type", pa.string()),
        ("question", pa.string()),
        ("ground_truth", pa.string()),
        ("options", pa.list_(pa.string())),
    ]
)

# VSI-Bench prompt lines (official and Spatial-R1's), so the tokenizer learns the words the evaluator sends.
PROMPT_LINES = (
    "These are frames of a video.",
    "Options:",
    "Answer with the option's letter from the given choices directly.",
    "Please answer the question using a single word or phrase.",
    "Question:",
    "First output the thinking process in <think> </think> tags and then output an option letter in "
    "<answer> </answer> tags.",
    "Do not response anything other than a single number!",
)


# Qwen2-VL and Qwen2.5-VL open with this system message when the conversation has none; Qwen3-VL does not.
DEFAULT_SYSTEM_TEMPLATE = """\
{%- if messages[0]['role'] != 'system' %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
"""

MESSAGES_TEMPLATE = """\
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\\n' }}
    {%- if message['content'] is string %}
        {{- message['content'] }}
    {%- else %}
        {%- for item in message['content'] %}
            {%- if item['type'] == 'image' or 'image' in item or 'image_url' in item %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif item['type'] == 'video' or 'video' in item %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}
                {{- item['text'] }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


# ---------------------------------------------------------------------------------------------------------
# Questions


def _numerical(question, answer):
    return question, answer, None


def _multiple_choice(rng, question, correct, wrong):
    """Shuffle the choices, letter them, and return the correct one's letter as the ground truth."""
    choices = [correct, *wrong]
    order = rng.permutation(len(choices))
    options = [f"{'ABCD'[k]}. {choices[i]}" for k, i in enumerate(order)]
    return question, "ABCD"[int(np.argmin(order))], options


def _pick(rng, choices):
    """One of `choices` as the answer, the rest as the wrong options."""
    answer = str(rng.choice(choices))
    return answer, [c for c in choices if c != answer]


def scene_questions(rng):
    """One question of each VSI-Bench type, worded as upstream, about objects drawn from OBJECTS.

    Returns (question_type, question, ground_truth, options) tuples; options is None for numerical types.
    Upstream's easy direction questions have two options, medium three, the other choice types four.
    """
    a, b, c, d, e = (str(o) for o in rng.choice(OBJECTS, size=5, replace=False))
    standing = f"If I am standing by the {a} and facing the {b}"
    turns = ("Turn Left", "Turn Right", "Turn Back")
    routes = [f"{first}, {second}" for first in turns for second in turns]  # the two [please fill in] steps
    route, *wrong_routes = (str(r) for r in rng.choice(routes, size=4, replace=False))
    order = [a, b, c, d]
    wrong_orders = [", ".join(order[i] for i in p) for p in ([1, 0, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0])]
    rows = {
        "object_counting": _numerical(f"How many {a}(s) are in this room?", str(rng.integers(1, 7))),
        "object_abs_distance": _numerical(
            f"Measuring from the closest point of each object, what is the direct distance between the {a} "
            f"and the {b} (in meters)?",
            f"{rng.uniform(0.5, 5.0):.1f}",
        ),
        "object_size_estimation": _numerical(
            f"What is the length of the longest dimension (length, width, or height) of the {c}, "
            "measured in centimeters?",
            str(rng.integers(30, 250)),
        ),
        "room_size_estimation": _numerical(
            "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the "
            "size of the combined space.",
            f"{rng.uniform(8.0, 60.0):.1f}",
        ),
        "object_rel_distance": _multiple_choice(
            rng,
            "Measuring from the closest point of each object, which of these objects "
            f"({', '.join(rng.permutation([b, c, d, e]))}) is the closest to the {a}?",
            *_pick(rng, [b, c, d, e]),
        ),
        "object_rel_direction_easy": _multiple_choice(
            rng,
            f"{standing}, is the {c} to the left or the right of the {b}?",
            *_pick(rng, ["Left", "Right"]),
        ),
        "object_rel_direction_medium": _multiple_choice(
            rng,
            f"{standing}, is the {c} to my left, right, or back? An object is to my back if I would have to "
            "turn at least 135 degrees in order to face it.",
            *_pick(rng, ["Left", "Right", "Back"]),
        ),
        "object_rel_direction_hard": _multiple_choice(
            rng,
            f"{standing}, is the {c} to my front-left, front-right, back-left, or back-right? The directions "
            "refer to the quadrants of a Cartesian plane (if I am standing at the origin and facing along "
            "the positive y-axis).",
            *_pick(rng, ["front-left", "front-right", "back-left", "back-right"]),
        ),
        "route_planning": _multiple_choice(
            rng,
            f"You are a robot beginning at the {a} facing the {b}. You want to navigate to the {c}. You will "
            "perform the following actions (Note: for each [please fill in] step, choose either 'turn back,' "
            f"'turn left,' or 'turn right.'): 1. Go forward until the {b} 2. [please fill in] 3. Go forward "
            f"until the {d} 4. [please fill in] 5. Go forward until the {c}. You have reached the final "
            "destination.",
            route,
            wrong_routes,
        ),
        "obj_appearance_order": _multiple_choice(
            rng,
            "What will be the first-time appearance order of the following categories in the video: "
            f"{c}, {a}, {d}, {b}?",
            ", ".join(order),
            wrong_orders,
        ),
    }
    return [(question_type, *row) for question_type, row in rows.items()]


# ---------------------------------------------------------------------------------------------------------
# Checkpoint


def _tokenizer_corpus():
    """Text like what the evaluator will send: prompt lines, questions, options, chat roles, timestamps."""
    rng = np.random.default_rng(0)
    corpus = list(PROMPT_LINES) + ["system", "user", "assistant", "You are a helpful assistant."]
    for _ in range(6):
        for _, question, answer, options in scene_questions(rng):
            corpus += [question, answer, *(options or [])]
    # Qwen3-VL's processor writes a timestamp such as "<3.5 seconds>" before each temporal grid.
    corpus += [f"<{t / 2:.1f} seconds>" for t in range(0, 80)]
    return corpus


def build_tokenizer():
    """A byte-level BPE of a few hundred tokens, pre-tokenized like Qwen's, wrapped as Qwen2Tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # min_frequency 1: the corpus is small, so most of its words become whole tokens.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=1,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    bpe.train_from_iterator(_tokenizer_corpus(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab = dict(trained["vocab"])
    for token in SPECIAL_TOKENS:  # after the learned tokens, as in Qwen's vocabulary
        vocab[token] = len(vocab)
    return transformers.Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in trained["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
    )


def build_processor(family, tokenizer):
    """Tokenizer plus image and video processors whose geometry matches the vision config.

    The size limits are explicit and low, so small frames are never upsampled, and high enough that
    frames up to 448 x 448 are never shrunk.
    """
    spec = FAMILY_SPECS[family]
    factor = spec["patch_size"] * 2
    geometry = {"patch_size": spec["patch_size"], "merge_size": 2, "temporal_patch_size": 2}
    if spec["pixel_mean_std"]:
        geometry |= {"image_mean": spec["pixel_mean_std"], "image_std": spec["pixel_mean_std"]}
    frame_limits = {"shortest_edge": 4 * factor * factor, "longest_edge": 448 * 448 * 2}
    image_processor = transformers.Qwen2VLImageProcessor(size=frame_limits, **geometry)
    # cap_pixels_per_frame=False keeps today's sizing and silences the warning about its future default.
    video_processor = getattr(transformers, spec["video_processor"])(
        size=spec["video_size"] or frame_limits, cap_pixels_per_frame=False, **geometry
    )
    return getattr(transformers, spec["processor"])(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=(DEFAULT_SYSTEM_TEMPLATE if spec["default_system"] else "") + MESSAGES_TEMPLATE,
    )


def build_model(family, tokenizer, seed, width=64, layers=2):
    """A text model of `layers` layers and `width` channels (heads of HEAD_DIM) and a two-block vision tower,
    with random weights, the same for the same seed."""
    spec = FAMILY_SPECS[family]
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": width // HEAD_DIM,
        "num_key_value_heads": max(1, width // HEAD_DIM // 2),
        "max_position_embeddings": 32768,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "initializer_range": INIT_STD,
        **spec["text"],
    }
    vision_config = {
        "depth": 2,
        "patch_size": spec["patch_size"],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": INIT_STD,
        spec["vision_output"]: width,
        **spec["vision"],
    }
    config = transformers.AutoConfig.for_model(
        family,
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's random state
        torch.manual_seed(seed)
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        do_sample=False,
    )
    return model


def build_tiny_checkpoint(out_dir, family="qwen2_5_vl", seed=0, width=64, layers=2) -> pathlib.Path:
    """Save a tiny random checkpoint of `family` (config, weights, tokenizer, processors, template).
    `width` and `layers` size the text model (the benchmark uses a larger one than the demo)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out_dir = pathlib.Path(out_dir)
    tokenizer = build_tokenizer()
    build_processor(family, tokenizer).save_pretrained(out_dir)
    build_model(family, tokenizer, seed, width, layers).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------
# The demo set


def render_frames(width, height, n_frames, rng):
    """Coloured boxes bouncing over a plain background, so consecutive frames differ."""
    background = rng.integers(40, 200, size=3, dtype=np.uint8)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    frames[:] = background
    for _ in range(3):
        size = rng.integers(height // 6, height // 3, size=2)  # box height, width
        span = np.array([height, width]) - size
        start = rng.uniform(0, span)
        velocity = rng.choice([-1, 1], size=2) * rng.uniform(1.0, 3.0, size=2)  # pixels per frame
        colour = rng.integers(0, 256, size=3, dtype=np.uint8)
        for t in range(n_frames):
            # A triangle wave keeps the box inside the frame: it bounces off the edges.
            y, x = (span - np.abs((start + velocity * t) % (2 * span) - span)).astype(int)
            frames[t, y : y + size[0], x : x + size[1]] = colour
    return frames


def write_video(path, frames, fps):
    """Encode RGB frames as H.264 yuv420p mp4 (MPEG-4 part 2 where this PyAV has no libx264)."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def build_demo_dataset(out_dir, seed=0) -> pathlib.Path:
    """Write DEMO_SCENES' videos and one question of each type per video to `out_dir/test.parquet`."""
    out_dir = pathlib.Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for dataset, scene_name, width, height, seconds in DEMO_SCENES:
        video_path = out_dir / dataset / f"{scene_name}.mp4"
        video_path.parent.mkdir(parents=True, exist_ok=True)
        write_video(video_path, render_frames(width, height, seconds * DEMO_FPS, rng), DEMO_FPS)
        for question_type, question, ground_truth, options in scene_questions(rng):
            rows.append(
                {
                    "dataset": dataset,
                    "scene_name": scene_name,
                    "question_type": question_type,
                    "question": question,
                    "ground_truth": ground_truth,
                    "options": options,
                }
            )
    # Upstream ids have gaps where questions were filtered out: skip every fourth one.
    for i, row in enumerate(rows):
        row["id"] = i + i // 3
    parquet = out_dir / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), parquet)
    return parquet


# ---------------------------------------------------------------------------------------------------------
# The demo folder


def _build_marker(family):
    """What a demo checkpoint records about its build: another family or transformers major means rebuild."""
    return {"family": family, "transformers_major": int(transformers.__version__.split(".")[0])}


def _checkpoint_is_current(model_dir, family):
    marker = model_dir / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == _build_marker(family)


def _build_marked_checkpoint(out_dir, family):
    build_tiny_checkpoint(out_dir, family)
    (out_dir / MARKER).write_text(json.dumps(_build_marker(family)))  # last: it says the build finished


def _build_in_place(target, build):
    """Run `build(tmp_dir)` in a sibling temporary folder and rename it to `target` once complete.

    A killed build leaves at most a hidden `.NAME-*` folder beside it, never a half-built `target`.
    """
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)  # a stale build: other family or transformers major
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_demo(demo_dir, family="qwen2_5_vl") -> dict:
    """Build what is missing under `demo_dir` and reuse what is there.

    Layout: model/ (checkpoint), vsibench/test.parquet, vsibench/{dataset}/{scene_name}.mp4.
    """
    demo_dir = pathlib.Path(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    model_dir, video_dir = demo_dir / "model", demo_dir / "vsibench"

    if not _checkpoint_is_current(model_dir, family):
        _build_in_place(model_dir, lambda tmp: _build_marked_checkpoint(tmp, family))
    if not (video_dir / "test.parquet").is_file():
        _build_in_place(video_dir, build_demo_dataset)

    return {"model": model_dir, "parquet": video_dir / "test.parquet", "video_dir": video_dir}
