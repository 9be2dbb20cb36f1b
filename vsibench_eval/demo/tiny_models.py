"""Tiny random Qwen-VL checkpoints, built locally: no model hub is reachable where this project runs.

A byte-level BPE trained on VSI-Bench-like prompts, Qwen's special tokens and chat templates, the real
processors, and a tiny random model with the real families' patch geometry, for every family the evaluator
accepts. The tokenizer learns from the demo's
questions (data.py).
"""

import json
import pathlib

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers.models.qwen2 import tokenization_qwen2
from transformers.models.qwen3_5 import tokenization_qwen3_5

from vsibench_eval.demo.data import scene_questions
from vsibench_eval.model.families import QWEN_VL_MODEL_TYPES

FAMILIES = QWEN_VL_MODEL_TYPES  # a tiny checkpoint of every family the evaluator accepts

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

HEAD_DIM = 16  # text attention head size; `mrope_section` sums to the rotary part of a head / 2

# Weight std of the random models. At the usual 0.02 attention is nearly uniform and tiny next to the
# embeddings, so greedy decoding ignores the prompt and the video; at 0.2 both change the output.
INIT_STD = 0.2

# Qwen3-VL's input side, which Qwen3-VL-MoE, Qwen3.5 (dense and MoE) and Qwen4-Exp share: Qwen3VLProcessor, a
# timestamp before each temporal grid, patch 16, no default system message.
QWEN3_VL_INPUT = {
    "processor": "Qwen3VLProcessor",
    "video_processor": "Qwen3VLVideoProcessor",
    "patch_size": 16,
    "default_system": False,
    "pixel_mean_std": [0.5, 0.5, 0.5],
    # Its video limits count the pixels of all frames together; these are the real checkpoint's.
    "video_size": {"shortest_edge": 4096, "longest_edge": 768 * 32 * 32 * 32},
    "vision_output": "out_hidden_size",
}
QWEN3_VL_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "num_position_embeddings": 144,  # a 12 x 12 learned grid, interpolated to each frame
}
QWEN3_VL_ROPE = {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True}  # 8 = 16 / 2

# Qwen3.5 and Qwen4-Exp mix gated delta-net (linear attention) layers into the text model (`hybrid` below: all
# layers but the last are linear) and rotate only a quarter of each head, as the real checkpoints do: heads of
# 32 rotate 8 channels, so `mrope_section` sums to 4.
HYBRID_TEXT = {
    "head_dim": 2 * HEAD_DIM,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": HEAD_DIM,
    "linear_value_head_dim": HEAD_DIM,
    "linear_conv_kernel_dim": 4,
    "rope_parameters": {
        "rope_type": "default",
        "partial_rotary_factor": 0.25,
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
    },
}
MOE_TEXT = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}

# The per-family pieces. Vision towers are tiny but keep the real patch, merge and temporal sizes, so
# grids and token counts match the real models.
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
        **QWEN3_VL_INPUT,
        "text": {"head_dim": HEAD_DIM, "rope_parameters": QWEN3_VL_ROPE},
        "vision": {**QWEN3_VL_VISION, "deepstack_visual_indexes": [0]},
    },
    "qwen3_vl_moe": {
        **QWEN3_VL_INPUT,
        "text": {"head_dim": HEAD_DIM, "rope_parameters": QWEN3_VL_ROPE, **MOE_TEXT},
        "vision": {**QWEN3_VL_VISION, "deepstack_visual_indexes": [0]},
    },
    "qwen3_5": {
        **QWEN3_VL_INPUT,
        "tokenizer": "Qwen3_5Tokenizer",
        "hybrid": True,
        "text": HYBRID_TEXT,
        "vision": QWEN3_VL_VISION,
    },
    "qwen3_5_moe": {
        **QWEN3_VL_INPUT,
        "tokenizer": "Qwen3_5Tokenizer",
        "hybrid": True,
        "text": {**HYBRID_TEXT, **MOE_TEXT, "shared_expert_intermediate_size": 32},
        "vision": QWEN3_VL_VISION,
    },
    "qwen4_exp": {
        **QWEN3_VL_INPUT,
        "tokenizer": "Qwen3_5Tokenizer",
        "hybrid": True,  # its full-attention layers become "indexed_attention": sparse, chosen by an indexer
        "text": {
            **HYBRID_TEXT,
            **MOE_TEXT,
            "shared_expert_intermediate_size": 32,
            "hc_count": 4,  # hyper-connection streams (the library default)
            "hc_lowrank": 8,
            # The indexer keeps `indexer_budget` of the earlier tokens, in blocks of `indexer_compress_ratio`;
            # 32 of a prompt's hundreds, so attention really is sparse.
            "indexer_n_heads": 2,
            "indexer_kv_heads": 1,
            "indexer_head_dim": HEAD_DIM,
            "indexer_budget": 32,
            "indexer_compress_ratio": 4,
            # Hashed n-gram embeddings on the first layer, with their own conv and token-context cache states.
            "ple_layer_ids": [1],
            "heads_per_ngram": 2,
            "ngram_vocab_size_base": 1000,
        },
        "vision": QWEN3_VL_VISION,
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


# Each family's tokenizer class and its pre-tokenizing regex (Qwen3.5's also keeps combining marks in words).
TOKENIZERS = {
    "Qwen2Tokenizer": tokenization_qwen2.PRETOKENIZE_REGEX,
    "Qwen3_5Tokenizer": tokenization_qwen3_5.PRETOKENIZE_REGEX,
}


def build_tokenizer(family="qwen2_5_vl"):
    """A byte-level BPE of a few hundred tokens, pre-tokenized like the family's, wrapped in its tokenizer class."""
    tokenizer_class = FAMILY_SPECS[family].get("tokenizer", "Qwen2Tokenizer")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(TOKENIZERS[tokenizer_class]), behavior="isolated"),
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
    return getattr(transformers, tokenizer_class)(
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


def build_model(family, tokenizer, seed, width=64, layers=2, init_std=INIT_STD):
    """A text model of `layers` layers and `width` channels (width / HEAD_DIM heads, of the family's head_dim) and a
    two-block vision tower, with random weights of std `init_std`, the same for the same seed."""
    spec = FAMILY_SPECS[family]
    ids = tokenizer.convert_tokens_to_ids
    if spec.get("hybrid"):  # linear attention in all layers but the last (the real models: three of every four)
        layer_types = ["linear_attention"] * (layers - 1) + ["full_attention"]
        spec = spec | {"text": spec["text"] | {"layer_types": layer_types}}
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
        "initializer_range": init_std,
        **spec["text"],
    }
    vision_config = {
        "depth": 2,
        "patch_size": spec["patch_size"],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": init_std,
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
    # Seed the weights without touching the caller's random state.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        for name, weights in model.named_parameters():
            if name.endswith("linear_attn.A_log"):
                # Decay rates A of the gated delta-nets in [0.01, 0.1] (the library draws them in [0.01, 16]), so
                # their recurrent state still holds the video after a question's few dozen tokens.
                torch.nn.init.uniform_(weights, 0.01, 0.1).log_()
            if name.endswith("ple.conv1d.weight"):  # Qwen4-Exp starts its n-gram convolution at zero, so
                torch.nn.init.normal_(weights, std=init_std)  # its cache state would not matter
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        do_sample=False,
    )
    return model


def build_tiny_checkpoint(out_dir, family="qwen2_5_vl", seed=0, width=64, layers=2, init_std=INIT_STD) -> pathlib.Path:
    """Save a tiny random checkpoint of `family` (config, weights, tokenizer, processors, template).
    `width` and `layers` size the text model (the benchmark uses a larger one than the demo); `init_std` is the
    weights' spread (a model to be trained starts from the usual, smaller one)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out_dir = pathlib.Path(out_dir)
    tokenizer = build_tokenizer(family)
    build_processor(family, tokenizer).save_pretrained(out_dir)
    build_model(family, tokenizer, seed, width, layers, init_std).save_pretrained(out_dir)
    return out_dir
