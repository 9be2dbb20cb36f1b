"""Tiny random Qwen-VL checkpoints, built locally: no model hub is reachable where this project runs.

A byte-level BPE trained on VSI-Bench-like prompts, Qwen's special tokens and chat templates, the real
processors, and a tiny random model with the real families' patch geometry. Imports demo_data (the
questions the tokenizer learns from).
"""

import json
import pathlib

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from demo_data import scene_questions

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

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
