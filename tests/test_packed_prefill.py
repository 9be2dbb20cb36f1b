"""The fast decoder's packed prefill (packed_prefill.py) and the decode counters: the same tokens as generate,
no padding prefilled, and decode steps and rows counted by both decoders."""

import pytest
import torch
from helpers import answer_tokens, video_and_texts

from vsibench_eval.model.decode import FastDecoder
from vsibench_eval.model.generation import (
    StageTimer,
    generate_from_prefix,
    load_model,
    prefill_prefix,
    shared_prefix_text,
)
from vsibench_eval.model.packed_prefill import last_token_of_each_row, packed_layout, packed_mask


def test_packed_layout_and_mask():
    attention_mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 1]])  # prefix of 2, left padding
    rows, columns = packed_layout(attention_mask, 2)
    assert rows.tolist() == [0, 0, 1, 1, 1, 2] and columns.tolist() == [3, 4, 2, 3, 4, 4]
    assert last_token_of_each_row(rows).tolist() == [1, 4, 5]
    mask = packed_mask(rows, columns, 2)[0, 0]
    assert mask.shape == (6, 8) and mask[:, :2].all()
    own = mask[:, 2:].int().tolist()
    assert own == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_packed_prefill_computes_no_padding_and_decode_steps_are_counted(demo_dirs, family, monkeypatch):
    demo = demo_dirs(family)
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    answer_tokens(model, processor, monkeypatch)
    video, texts = video_and_texts(demo, processor, 0)
    prefix = prefill_prefix(model, processor, video, shared_prefix_text(texts), "2.0")
    batch = texts[1:6]
    own = [len(processor.tokenizer(t[len(prefix.text) :], add_special_tokens=False)["input_ids"]) for t in batch]
    assert len(set(own)) > 1  # rows of different lengths: the HF path pads them

    counts = {}
    for name in ("hf", "fast"):
        timer = StageTimer(model)
        decoder = FastDecoder(model, timer=timer) if name == "fast" else None
        answers = generate_from_prefix(model, processor, prefix, batch, max_new_tokens=12, decoder=decoder)
        timer.remove()
        counts[name] = (answers, timer.prefill_tokens, timer.decode_steps, timer.decoded_tokens)
    (hf_answers, hf_prefill, hf_steps, hf_rows), (fast_answers, fast_prefill, fast_steps, fast_rows) = counts.values()
    assert fast_answers == hf_answers
    assert hf_prefill == len(batch) * max(own) and fast_prefill == sum(own)
    longest = max(len(answer) for answer in hf_answers)
    assert hf_steps == fast_steps == longest - 1  # the first token comes from the prefill
    assert hf_rows == len(batch) * hf_steps  # generate carries every row to the end
    assert fast_steps <= fast_rows <= hf_rows  # the fast decoder drops finished rows
