"""The packed vision attention (vision_attention.py) against transformers' own per-window loop: the same encoder
output bit for bit, in a few attention calls per layer instead of one per window."""

import pytest
import torch
from transformers.vision_utils import get_vision_window_index

from vsibench_eval.demo.tiny_models import build_model, build_tokenizer
from vsibench_eval.model.generation import lent_model
from vsibench_eval.model.vision_attention import use_packed_vision_attention


def counting_sdpa(monkeypatch) -> list[int]:
    """Count calls of torch's scaled_dot_product_attention (transformers' sdpa path and ours both call it)."""
    calls = [0]
    original = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


def encode(visual, grid: list[int]) -> torch.Tensor:
    """The encoder's merged output for random patches of one video of `grid` (t, h, w) patches."""
    config = visual.config
    patch = config.in_channels * config.temporal_patch_size * config.patch_size**2
    patches = torch.randn(grid[0] * grid[1] * grid[2], patch, generator=torch.Generator().manual_seed(sum(grid)))
    with torch.no_grad():
        return visual(patches, grid_thw=torch.tensor([grid])).pooler_output


def window_lengths(visual, grid: list[int]) -> set[int]:
    """The distinct window lengths Qwen2.5-VL's windowed layers see for this grid."""
    _, bounds = get_vision_window_index(torch.tensor([grid]), 2, visual.config.window_size, visual.config.patch_size)
    return set(bounds.diff().tolist()) - {0}


# Grids (temporal, height, width in patches): 448x336 frames for Qwen2.5-VL (every window full), and sizes whose
# right and bottom edges cut windows short (two to four window lengths), with bottom-right corners of every size
# (2 x 2, 3 x 3, 1 x 3, 1 x 1, 2 x 3 and 1 x 2 merged patches).
GRIDS = [[2, 32, 24], [2, 20, 28], [2, 22, 30], [2, 34, 46], [2, 18, 26], [2, 20, 30], [2, 18, 28]]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_packed_vision_attention_is_bitwise_transformers_own_in_few_calls(family, monkeypatch):
    model = build_model(family, build_tokenizer(family), seed=0).eval()
    visual = model.model.visual
    assert visual.config._attn_implementation == "sdpa"
    calls = counting_sdpa(monkeypatch)
    layers = len(visual.blocks)
    full_layers = set(getattr(visual, "fullatt_block_indexes", range(layers)))
    for grid in GRIDS if family == "qwen2_5_vl" else GRIDS[:2]:
        visual.config._attn_implementation = "sdpa"
        calls[0] = 0
        expected = encode(visual, grid)
        per_window_calls = calls[0]
        assert use_packed_vision_attention(model) == "packed"
        calls[0] = 0
        assert torch.equal(encode(visual, grid), expected)
        # Per-frame segments share one call; windows of a multiple of 16 tokens one more (padded), each other
        # length (a frame's bottom-right corner) its own: at most two.
        lengths = window_lengths(visual, grid) if family == "qwen2_5_vl" else {16}
        windowed = any(length % 16 == 0 for length in lengths) + sum(length % 16 != 0 for length in lengths)
        assert windowed <= 2
        assert calls[0] == sum(1 if layer in full_layers else windowed for layer in range(layers))
        assert calls[0] < per_window_calls
        if grid == GRIDS[0]:
            assert calls[0] == layers  # equal windows: one call per layer


def test_other_attention_keeps_its_own_path_and_a_lent_model_gets_its_own_back():
    model = build_model("qwen2_5_vl", build_tokenizer("qwen2_5_vl"), seed=0).eval()
    vision_config = model.model.visual.config
    for implementation in ("flash_attention_2", "eager"):
        vision_config._attn_implementation = implementation
        assert use_packed_vision_attention(model) == implementation
        assert vision_config._attn_implementation == implementation
    vision_config._attn_implementation = "sdpa"

    class Processor:  # lent_model only touches the tokenizer's padding side
        tokenizer = build_tokenizer("qwen2_5_vl")

    with lent_model(model, Processor(), "transformers") as info:
        assert info["vision_attention"] == "packed"
    assert vision_config._attn_implementation == "sdpa"
