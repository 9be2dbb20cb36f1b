"""M-RoPE positions by the published rule: hand-computed tables, transformers 5.24 beside them, and generation.

Positions depend only on the token types and the grids, so the hand-built prompts below are strings of token
kinds: T text (including <|vision_start|>, <|vision_end|> and the Qwen3-VL-style families' timestamps), I image,
V video, P padding.
"""

import numpy as np
import pytest
import torch
import transformers

from vsibench_eval.demo import tiny_models
from vsibench_eval.model.families import QWEN_VL_MODEL_TYPES
from vsibench_eval.model.positions import (
    compare_positions,
    describe_token,
    format_position,
    mrope_position_ids,
    use_published_positions,
)

TINY_TEXT = {
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2]},
}
QWEN3_VL_VISION = {
    "hidden_size": 16,
    "out_hidden_size": 16,
    "intermediate_size": 16,
    "num_heads": 2,
    "num_position_embeddings": 16,
}
TINY_VISION = {
    "qwen2_vl": {"embed_dim": 16, "hidden_size": 16, "num_heads": 2, "mlp_ratio": 1},
    "qwen2_5_vl": {"hidden_size": 16, "out_hidden_size": 16, "intermediate_size": 16, "num_heads": 2},
    "qwen3_vl": QWEN3_VL_VISION | {"deepstack_visual_indexes": []},
    "qwen3_vl_moe": QWEN3_VL_VISION | {"deepstack_visual_indexes": []},
    "qwen3_5": QWEN3_VL_VISION,
    "qwen3_5_moe": QWEN3_VL_VISION,
    "qwen4_exp": QWEN3_VL_VISION,
}
MOE = {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 8}
LINEAR = {"linear_num_key_heads": 1, "linear_num_value_heads": 1, "linear_key_head_dim": 8, "linear_value_head_dim": 8}
INDEXER = {"indexer_n_heads": 1, "indexer_kv_heads": 1, "indexer_head_dim": 8, "indexer_budget": 4}
TINY_TEXT_EXTRA = {  # what each family's text config needs beyond TINY_TEXT
    "qwen3_vl_moe": MOE,
    "qwen3_5": LINEAR,
    "qwen3_5_moe": LINEAR | MOE | {"shared_expert_intermediate_size": 8},
    "qwen4_exp": LINEAR
    | MOE
    | INDEXER
    | {"shared_expert_intermediate_size": 8, "hc_count": 2, "hc_lowrank": 4}
    | {"indexer_compress_ratio": 2},
}
# The Qwen3-VL-style families: each temporal grid of a video is its own block after a timestamp.
FRAME_BLOCK_FAMILIES = ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "qwen4_exp"]
FAMILIES = ["qwen2_vl", "qwen2_5_vl", *FRAME_BLOCK_FAMILIES]


def tiny_model(family, tokens_per_second=2):
    """The family's real config class and model class, tiny; merge size 2 as in the real checkpoints."""
    vision = {"depth": 1, "spatial_merge_size": 2, **TINY_VISION[family]}
    if family == "qwen2_5_vl":
        vision["tokens_per_second"] = tokens_per_second
    text = TINY_TEXT | TINY_TEXT_EXTRA.get(family, {})
    config = transformers.AutoConfig.for_model(family, text_config=text, vision_config=vision)
    return transformers.AutoModelForImageTextToText.from_config(config)


TOKEN_TYPES = {"T": 0, "I": 1, "V": 2, "P": 0}  # mm_token_type_ids; padding is typed as text


def prompt(*rows):
    """input_ids, mm_token_type_ids and attention_mask [B, L] for rows of token kinds such as "TT IIII T"."""
    kinds = [row.replace(" ", "") for row in rows]
    types = torch.tensor([[TOKEN_TYPES[kind] for kind in row] for row in kinds])
    attention_mask = torch.tensor([[int(kind != "P") for kind in row] for row in kinds])
    # Only the types matter for positions; the ids are there for the shape.
    return {"input_ids": torch.zeros_like(types), "mm_token_type_ids": types, "attention_mask": attention_mask}


def published(model, inputs, **vision):
    return mrope_position_ids(
        model.config, inputs["input_ids"], inputs["mm_token_type_ids"], inputs["attention_mask"], **vision
    )


def published_for(model, inputs):
    """mrope_position_ids for a processor output."""
    keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
    return published(model, inputs, **{key: inputs[key] for key in keys if key in inputs})


def transformers_rule(model, inputs, **vision):
    return model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], attention_mask=inputs["attention_mask"], **vision
    )


# ---------------------------------------------------------------------------------------------------------
# Hand-computed tables. Rows: temporal, height, width.


def test_the_tables_cover_every_accepted_family():
    assert sorted(FAMILIES) == sorted(QWEN_VL_MODEL_TYPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_image(family):
    # A 4 x 6 patch image merges to 2 x 3 tokens starting at position 3; the text after starts at max + 1 = 6.
    inputs = prompt("TTT IIIIII TT")
    expected = [
        [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7],
        [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7],
        [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7],
    ]
    model = tiny_model(family)
    positions, deltas = published(model, inputs, image_grid_thw=torch.tensor([[1, 4, 6]]))
    assert positions[:, 0].tolist() == expected
    assert deltas.tolist() == [[8 - 11]]
    assert torch.equal(positions, transformers_rule(model, inputs, image_grid_thw=torch.tensor([[1, 4, 6]]))[0])


def test_qwen2_5_vl_video_without_a_time_code_takes_one_second_per_grid():
    # No second_per_grid_ts: 1.0 s per temporal grid, 2 tokens per second, so temporal indices 0 and 2 from the
    # start 1 (one merged token per grid), and the text after starts at 3 + 1 = 4.
    positions, _ = published(
        tiny_model("qwen2_5_vl", tokens_per_second=2), prompt("T VV T"), video_grid_thw=torch.tensor([[2, 2, 2]])
    )
    assert positions[:, 0].tolist() == [[0, 1, 3, 4], [0, 1, 1, 4], [0, 1, 1, 4]]


def test_qwen3_vl_two_videos_each_grid_its_own_block():
    # Qwen3-VL writes each temporal grid as its own block between timestamp texts: 2 grids of the first video,
    # 1 of the second, one merged token each; every block and text continues at max + 1.
    inputs = prompt("T V T V T V T")
    positions, _ = published(tiny_model("qwen3_vl"), inputs, video_grid_thw=torch.tensor([[2, 2, 2], [1, 2, 2]]))
    assert positions[:, 0].tolist() == [list(range(7))] * 3


def test_published_positions_replace_the_models_own_for_images_and_videos():
    model = use_published_positions(tiny_model("qwen2_5_vl", tokens_per_second=2))
    inputs = prompt("TT II T VVVV T")  # a 2 x 4 patch image (1 x 2 merged tokens), then a 2-grid video
    vision = {
        "image_grid_thw": torch.tensor([[1, 2, 4]]),
        "video_grid_thw": torch.tensor([[2, 2, 4]]),
        "second_per_grid_ts": torch.tensor([3.0]),
    }
    theirs = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], attention_mask=inputs["attention_mask"], **vision
    )
    ours = published(model, inputs, **vision)
    assert torch.equal(theirs[0], ours[0]) and torch.equal(theirs[1], ours[1])


@pytest.mark.parametrize(
    "kinds, vision, message",
    [
        ("T VV T VV T", {"video_grid_thw": torch.tensor([[2, 2, 2]])}, "more video blocks than video_grid_thw"),
        ("T II T II T", {"image_grid_thw": torch.tensor([[1, 2, 4]])}, "more image blocks than image_grid_thw"),
        (
            "T VVV T",
            {"video_grid_thw": torch.tensor([[2, 2, 2]])},
            r"a block of 3 video tokens, but its grid \[2, 2, 2\] makes 2",
        ),
    ],
)
def test_prompts_that_do_not_match_their_grids_are_refused(kinds, vision, message):
    with pytest.raises(ValueError, match=message):
        published(tiny_model("qwen2_vl"), prompt(kinds), **vision)


def test_positions_without_an_attention_mask_count_every_token():
    inputs = {key: value for key, value in prompt("TTT IIIIII TT").items() if key != "attention_mask"}
    positions, deltas = mrope_position_ids(
        tiny_model("qwen2_vl").config, inputs["input_ids"], inputs["mm_token_type_ids"], None, torch.tensor([[1, 4, 6]])
    )
    assert positions[0, 0].tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7] and deltas.tolist() == [[8 - 11]]
    assert deltas.dtype == torch.long  # integer deltas, as transformers keeps them
    with pytest.raises(ValueError, match="M-RoPE positions for 'llama': expected one of"):
        mrope_position_ids(transformers.LlamaConfig(), inputs["input_ids"], inputs["mm_token_type_ids"])


def test_short_video_qwen2_vl():
    # Two temporal grids of 2 x 2 tokens: Qwen2-VL's temporal index is the grid index.
    inputs = prompt("TT VVVVVVVV T")
    expected = [
        [0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4],
        [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 4],
        [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4],
    ]
    model = tiny_model("qwen2_vl")
    video = {"video_grid_thw": torch.tensor([[2, 4, 4]])}
    positions, deltas = published(model, inputs, **video)
    assert positions[:, 0].tolist() == expected
    assert deltas.tolist() == [[5 - 11]]
    assert torch.equal(positions, transformers_rule(model, inputs, **video)[0])


def test_long_video_qwen2_5_vl():
    # Four temporal grids at 1.0 s with 2 tokens per second: temporal indices 0, 2, 4, 6 from the start 2,
    # so the text after starts at 2 + 6 + 1 = 9. transformers 5.24 puts it at 2 + max(2, 2) = 4.
    inputs = prompt("TT VVVVVVVVVVVVVVVV TT")
    expected = [
        [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 8, 8, 8, 8, 9, 10],
        [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 2, 2, 3, 3, 2, 2, 3, 3, 9, 10],
        [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 9, 10],
    ]
    model = tiny_model("qwen2_5_vl", tokens_per_second=2)
    video = {"video_grid_thw": torch.tensor([[4, 4, 4]]), "second_per_grid_ts": torch.tensor([1.0])}
    positions, deltas = published(model, inputs, **video)
    assert positions[:, 0].tolist() == expected
    assert deltas.tolist() == [[11 - 20]]

    theirs, their_deltas = transformers_rule(model, inputs, **video)
    assert torch.equal(theirs[:, 0, :18], positions[:, 0, :18])  # the same up to the end of the video
    assert theirs[:, 0, 18:].tolist() == [[4, 5]] * 3
    assert their_deltas.tolist() == [[9 - 20]]  # max + 1 is the video's last temporal index + 1, not the text's


@pytest.mark.parametrize(
    "seconds, temporal",
    [
        # floor(i × 3.75 × 2) = floor(0, 7.5, 15, 22.5) = 0, 7, 15, 22; the text after starts at 2 + 22 + 1.
        (3.75, [0, 1, 2, 2, 2, 2, 9, 9, 9, 9, 17, 17, 17, 17, 24, 24, 24, 24, 25, 26]),
        # floor(i × 0.5 × 2) = 0, 1, 2, 3.
        (0.5, [0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 7]),
    ],
)
def test_fractional_seconds_per_grid_qwen2_5_vl(seconds, temporal):
    inputs = prompt("TT VVVVVVVVVVVVVVVV TT")
    model = tiny_model("qwen2_5_vl", tokens_per_second=2)
    video = {"video_grid_thw": torch.tensor([[4, 4, 4]]), "second_per_grid_ts": torch.tensor([seconds])}
    positions, _ = published(model, inputs, **video)
    assert positions[0, 0].tolist() == temporal
    # transformers 5.24 floors the same way inside the video (4.57 cast the seconds to int first) but starts
    # the text after it at 2 + 2.
    theirs, _ = transformers_rule(model, inputs, **video)
    assert theirs[0, 0].tolist() == temporal[:18] + [4, 5]


FRAME_BLOCK_VIDEOS = [
    # Two temporal grids of 2 x 2 merged tokens, each its own block between timestamp texts, temporal index 0
    # inside a block; the text after a block starts at its largest position + 1.
    (
        "TTT VVVV TTTT VVVV TTT",
        [2, 4, 4],
        [
            [0, 1, 2, 3, 3, 3, 3, 5, 6, 7, 8, 9, 9, 9, 9, 11, 12, 13],
            [0, 1, 2, 3, 3, 4, 4, 5, 6, 7, 8, 9, 9, 10, 10, 11, 12, 13],
            [0, 1, 2, 3, 4, 3, 4, 5, 6, 7, 8, 9, 10, 9, 10, 11, 12, 13],
        ],
    ),
    # Three frames of 1 x 2 merged tokens, more frames than rows or columns: each block starts at 2, 5, 8 and
    # reaches one further in width, so the text after it starts at start + 2.
    (
        "TT VV T VV T VV TT",
        [3, 2, 4],
        [
            [0, 1, 2, 2, 4, 5, 5, 7, 8, 8, 10, 11],
            [0, 1, 2, 2, 4, 5, 5, 7, 8, 8, 10, 11],
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        ],
    ),
]


@pytest.mark.parametrize("family", FRAME_BLOCK_FAMILIES)
@pytest.mark.parametrize("kinds, grid, expected", FRAME_BLOCK_VIDEOS)
def test_video_frame_blocks(family, kinds, grid, expected):
    inputs = prompt(kinds)
    model = tiny_model(family)
    video = {"video_grid_thw": torch.tensor([grid])}
    positions, deltas = published(model, inputs, **video)
    assert positions[:, 0].tolist() == expected
    assert deltas.tolist() == [[max(expected[0]) + 1 - len(expected[0])]]
    # transformers 5.24 places these families' video tokens by the published rule too
    assert torch.equal(positions, transformers_rule(model, inputs, **video)[0])


def test_left_padding_and_different_vision_counts_per_row():
    # Row 0: five pads, an image. Row 1: an image, then a video of two grids at 2.0 s (temporal 0, 4).
    # The grids list the batch's images and videos in prompt order: row 0's image, then row 1's.
    inputs = prompt("PPPPP T IIII T", "T IIII T VVVV T")
    vision = {
        "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]]),
        "video_grid_thw": torch.tensor([[2, 2, 4]]),
        "second_per_grid_ts": torch.tensor([2.0]),
    }
    expected = [
        [
            [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 3],
            [0, 1, 1, 1, 1, 3, 4, 4, 8, 8, 9],
        ],
        [
            [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3],
            [0, 1, 1, 2, 2, 3, 4, 4, 4, 4, 9],
        ],
        [
            [0, 0, 0, 0, 0, 0, 1, 2, 1, 2, 3],
            [0, 1, 2, 1, 2, 3, 4, 5, 4, 5, 9],
        ],
    ]
    model = tiny_model("qwen2_5_vl", tokens_per_second=2)
    positions, deltas = published(model, inputs, **vision)
    assert positions.tolist() == expected
    assert deltas.tolist() == [[4 - 6], [10 - 11]]  # max + 1 - unpadded tokens

    # Row 0 has no video, so transformers agrees there, padding value and delta convention included.
    theirs, their_deltas = transformers_rule(model, inputs, **vision)
    assert torch.equal(theirs[:, 0], positions[:, 0])
    assert their_deltas[0].tolist() == [-2]
    assert theirs[:, 1, -1].tolist() == [4 + 2] * 3  # after the video: start + max(1, 2) instead of 9


def test_compare_positions_on_a_long_video():
    # A Qwen2.5-VL video of 16 temporal grids at 1 s, 16 x 16 merged tokens per grid: transformers 5.24 puts
    # the first text token after it at start + 16, the published rule at start + 31.
    inputs = prompt("TTTT " + "V" * 16 * 16 * 16 + " TTT")
    inputs |= {"video_grid_thw": torch.tensor([[16, 32, 32]]), "second_per_grid_ts": torch.tensor([1.0])}
    model = tiny_model("qwen2_5_vl", tokens_per_second=2)
    assert compare_positions(model, inputs) == (
        "transformers' M-RoPE positions differ from the published rule from token 4100 of 4103 "
        "(the first text token after a video): transformers 20, published 35; 3 tokens differ."
    )


def test_compare_positions_names_the_row_in_a_batch():
    # The long video of the test above in row 1; row 0 is text only, left-padded to the same length.
    inputs = prompt("P" * 4100 + " TTT", "TTTT " + "V" * 16 * 16 * 16 + " TTT")
    inputs |= {"video_grid_thw": torch.tensor([[16, 32, 32]]), "second_per_grid_ts": torch.tensor([1.0])}
    assert compare_positions(tiny_model("qwen2_5_vl", tokens_per_second=2), inputs) == (
        "transformers' M-RoPE positions differ from the published rule from token 4100 of 4103 in row 1 "
        "(the first text token after a video): transformers 20, published 35; 3 tokens differ."
    )


def test_compare_positions_counts_only_unpadded_tokens():
    # Row 0 is left-padded by two; both rules skip padding, so they agree on the 11 + 13 real tokens.
    model = tiny_model("qwen2_vl")
    grids = {"image_grid_thw": torch.tensor([[1, 4, 6], [1, 4, 6]])}
    inputs = prompt("PP TTT IIIIII TT", "TTTTT IIIIII TT") | grids
    assert compare_positions(model, inputs) == (
        "transformers' M-RoPE positions agree with the published rule on all 24 tokens."
    )
    # a processor output without an attention mask: every token counts
    unmasked = {key: value for key, value in prompt("TTT IIIIII TT").items() if key != "attention_mask"}
    assert compare_positions(model, unmasked | {"image_grid_thw": torch.tensor([[1, 4, 6]])}) == (
        "transformers' M-RoPE positions agree with the published rule on all 11 tokens."
    )


@pytest.mark.parametrize(
    "kinds, index, expected",
    [
        ("TVT", 2, "the first text token after a video"),
        ("IVT", 2, "the first text token after a video"),
        ("VT", 1, "the first text token after a video"),
        ("ITT", 1, "the first text token after an image"),
        ("TT", 1, "a text token"),
        ("TV", 0, "a text token"),
        ("VV", 1, "a video token"),
        ("TI", 1, "an image token"),
    ],
)
def test_describe_token(kinds, index, expected):
    assert describe_token([TOKEN_TYPES[kind] for kind in kinds], index) == expected


def test_format_position():
    assert format_position(torch.tensor([7, 7, 7])) == "7"  # a text token: one number
    assert format_position(torch.tensor([1, 2, 3])) == "(t, h, w) = (1, 2, 3)"


def test_compare_positions_agreeing():
    inputs = prompt("TTT IIIIII TT") | {"image_grid_thw": torch.tensor([[1, 4, 6]])}
    assert compare_positions(tiny_model("qwen2_vl"), inputs) == (
        "transformers' M-RoPE positions agree with the published rule on all 11 tokens."
    )


# ---------------------------------------------------------------------------------------------------------
# Generation with tiny random checkpoints


@pytest.fixture(scope="module")
def checkpoints(demo_dirs):
    return {family: demo_dirs(family) / "model" for family in tiny_models.FAMILIES}


def load(path):
    return transformers.AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    )


def video_prompts(path, family, videos):
    """Processor output for one chat prompt per (num_frames, fps), left-padded; frames are 2 x 2 merged tokens."""
    processor = transformers.AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    side = 4 * processor.video_processor.patch_size  # 2 x 2 merged tokens
    texts, frames, metadata = [], [], []
    for num_frames, fps in videos:
        question = [{"type": "video"}, {"type": "text", "text": "How many chair(s) are in this room?"}]
        chat = [{"role": "user", "content": question}]
        texts.append(processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        rng = np.random.default_rng(num_frames)  # the same frames for the same video, batched or alone
        frames.append(rng.integers(0, 256, size=(num_frames, side, side, 3), dtype=np.uint8))
        metadata.append({"fps": fps, "frames_indices": list(range(num_frames)), "total_num_frames": num_frames})
    return processor(
        text=texts,
        videos=frames,
        video_metadata=metadata,
        padding=True,
        do_sample_frames=False,
        do_resize=False,
        return_tensors="pt",
    )


def greedy(model, inputs):
    """Greedy generation; returns the new tokens, the per-step logits and the position ids the language model
    received at each step: [4, B, n] (text positions, then temporal, height, width), [1, B, n] when generate
    continues a cache."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        out = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
    finally:
        hook.remove()
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits), seen


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, num_frames, fps",
    [
        ("qwen2_vl", 4, 10.0),  # 2 temporal grids, 2 x 2 tokens: the temporal extent does not exceed the spatial
        ("qwen2_5_vl", 8, 10.0),  # 4 grids at 0.2 s: temporal indices 0, 0, 0, 1
        # one block per grid: the two rules coincide for the Qwen3-VL-style families
        ("qwen3_vl", 16, 1.0),
        ("qwen3_vl_moe", 16, 1.0),
        ("qwen3_5", 16, 1.0),
        ("qwen3_5_moe", 16, 1.0),
        ("qwen4_exp", 16, 1.0),
    ],
)
def test_generation_equal_where_positions_agree(checkpoints, family, num_frames, fps):
    inputs = video_prompts(checkpoints[family], family, [(num_frames, fps)])
    model = load(checkpoints[family])
    assert "agree" in compare_positions(model, inputs)
    tokens, logits, _ = greedy(model, inputs)
    published_tokens, published_logits, _ = greedy(use_published_positions(load(checkpoints[family])), inputs)
    assert torch.equal(published_tokens, tokens)
    torch.testing.assert_close(published_logits, logits)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, num_frames",
    [
        ("qwen2_vl", 16),  # 8 temporal grids on 2 x 2 tokens
        ("qwen2_5_vl", 16),  # 8 grids at 2 s, 2 tokens per second: temporal indices 0, 4, ..., 28
    ],
)
def test_generation_differs_and_decodes_after_the_published_maximum(checkpoints, family, num_frames):
    inputs = video_prompts(checkpoints[family], family, [(num_frames, 1.0)])
    assert "differ" in compare_positions(load(checkpoints[family]), inputs)
    _, logits, _ = greedy(load(checkpoints[family]), inputs)
    model = use_published_positions(load(checkpoints[family]))
    _, published_logits, steps = greedy(model, inputs)
    assert not torch.allclose(published_logits[0], logits[0], atol=1e-3)

    expected, deltas = published_for(model, inputs)
    prompt_length = inputs["input_ids"].shape[1]
    assert torch.equal(steps[0][1:], expected)  # prefill
    assert torch.equal(model.model.rope_deltas, deltas)
    # Decoding continues right after the published maximum, which is where rope_deltas puts it too.
    first_decode = steps[1][1:, 0, 0].tolist()  # temporal, height, width
    assert first_decode == [int(expected.max()) + 1] * 3
    assert first_decode == [prompt_length + int(deltas)] * 3


@pytest.mark.slow
def test_left_padded_batch_decodes_each_row_after_its_maximum(checkpoints):
    inputs = video_prompts(checkpoints["qwen2_5_vl"], "qwen2_5_vl", [(16, 1.0), (4, 10.0)])
    assert inputs["attention_mask"][1, 0] == 0  # the shorter prompt is padded on the left
    model = use_published_positions(load(checkpoints["qwen2_5_vl"]))
    tokens, logits, steps = greedy(model, inputs)
    expected, deltas = published_for(model, inputs)
    assert torch.equal(steps[0][1:], expected)
    maxima = expected.amax(dim=(0, 2))  # [B]
    assert steps[1][1:, :, 0].tolist() == [(maxima + 1).tolist()] * 3
    assert (maxima + 1).tolist() == (inputs["attention_mask"].sum(dim=1) + deltas[:, 0]).tolist()

    # Each row generates as it does alone.
    for row, video in enumerate([(16, 1.0), (4, 10.0)]):
        alone = video_prompts(checkpoints["qwen2_5_vl"], "qwen2_5_vl", [video])
        row_tokens, row_logits, _ = greedy(use_published_positions(load(checkpoints["qwen2_5_vl"])), alone)
        assert torch.equal(tokens[row], row_tokens[0])
        torch.testing.assert_close(logits[:, row], row_logits[:, 0], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_cached_video_prefix_continues_at_the_published_positions(checkpoints):
    # Prefix reuse: prefill through the video once, then generate from that cache with the full prompt
    # and rope_deltas recomputed from it. The uncached tokens then sit at index + rope_deltas, which
    # under the published rule is where the plain path puts them (under 5.24's rule it is not).
    path = checkpoints["qwen2_5_vl"]
    inputs = video_prompts(path, "qwen2_5_vl", [(16, 1.0)])
    model = use_published_positions(load(path))
    tokens, _, plain_steps = greedy(model, inputs)

    end = int(inputs["mm_token_type_ids"][0].nonzero().max()) + 2  # through <|vision_end|>
    text_keys = ("input_ids", "attention_mask", "mm_token_type_ids")
    prefix = {key: value[:, :end] if key in text_keys else value for key, value in inputs.items()}
    cache = transformers.DynamicCache(config=model.config)
    with torch.no_grad():
        model(**prefix, cache=cache, use_cache=True)
    full_prompt = {key: inputs[key] for key in (*text_keys, "video_grid_thw", "second_per_grid_ts")}
    _, model.model.rope_deltas = model.model.get_rope_index(**full_prompt)
    cached_tokens, _, cached_steps = greedy(model, full_prompt | {"cache": cache})

    assert cached_steps[0][0, 0].tolist() == plain_steps[0][1, 0, end:].tolist()  # the question's positions
    assert torch.equal(cached_tokens, tokens)
