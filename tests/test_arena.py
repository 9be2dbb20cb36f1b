"""Decode batches that span videos (model/arena.py, running/continuous.py): the arena's answers are transformers'
generate's, token for token in float32, whatever the arena's size and the order in which questions come; a step
carries questions of several videos; and a run whose arena fails still answers every question once."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import answer_tokens, read_results, video_and_texts
from transformers import AttentionInterface, AutoModelForImageTextToText, AutoProcessor

import eval_qwen
from vsibench_eval.model import arena as arena_module
from vsibench_eval.model.arena_decoder import ArenaDecoder
from vsibench_eval.model.generation import generate_from_prefix, greedy, load_model, prefill_prefix, shared_prefix_text

BUDGET = 131072


def model_and_videos(demo_dirs, family: str, monkeypatch, questions: int) -> tuple:
    """The family's demo model and processor (answers as token ids), and (prefix, texts) of the demo's first three
    videos: prompts of different lengths, prefixes of 3 sizes."""
    demo = demo_dirs(family)
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    answer_tokens(model, processor, monkeypatch)
    videos = []
    for number in (0, 1, 2):
        video, texts = video_and_texts(demo, processor, number)
        videos.append((prefill_prefix(model, processor, video, shared_prefix_text(texts), "2.0"), texts[:questions]))
    return model, processor, videos


def generate_answers(model, processor, videos, max_new_tokens: int, one_by_one: bool = False) -> dict:
    """--decoder hf's answers: each video's questions in one left-padded batch through generate (`one_by_one`:
    each question alone)."""
    answers = {}
    for v, (prefix, texts) in enumerate(videos):
        batches = [[text] for text in texts] if one_by_one else [texts]
        rows = [
            row for batch in batches for row in generate_from_prefix(model, processor, prefix, batch, max_new_tokens)
        ]
        answers |= {(v, i): answer for i, answer in enumerate(rows)}
    return answers


def arena_answers(arena: ArenaDecoder, videos, order: list[int], advances_between: int) -> dict:
    """The arena's answers, the videos added in `order` with a few advances between them (questions come while
    others decode)."""
    answers = {}
    for v in order:
        prefix, texts = videos[v]
        arena.add(prefix, [(v, i) for i in range(len(texts))], texts)
        for _ in range(advances_between):
            answers.update(arena.advance())
    while arena.busy:
        answers.update(arena.advance())
    return answers


def end_early(model, processor, videos, max_new_tokens: int) -> None:
    """Make a token the random model often writes, but never first, an end token too, so answers end at
    different steps."""
    answers = generate_answers(model, processor, videos, max_new_tokens)
    firsts = {answer[0] for answer in answers.values()}
    later = Counter(token for answer in answers.values() for token in answer[2:] if token not in firsts)
    common = later.most_common(1)[0][0]
    end = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [*(end if isinstance(end, list) else [end]), common]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_every_admission_order_and_arena_size_gives_the_tokens_of_generate(demo_dirs, family, monkeypatch):
    model, processor, videos = model_and_videos(demo_dirs, family, monkeypatch, questions=6)
    end_early(model, processor, videos, 12)
    answer_tokens(model, processor, monkeypatch)  # the new end tokens
    expected = generate_answers(model, processor, videos, 12)
    lengths = sorted(len(answer) for answer in expected.values())
    assert lengths[0] < 12 and lengths[-1] == 12  # rows end early and are refilled while others run on

    videos_per_step = []

    def counting(self, holder, step, steps):
        videos_per_step.append(len({question.video for question in self.in_row if question is not None}))
        return run_steps(self, holder, step, steps)

    run_steps = ArenaDecoder.run_steps
    monkeypatch.setattr(ArenaDecoder, "run_steps", counting)
    attention_calls = []  # the arena's own attention, which does not copy key/value heads per query head

    def counted_attention(*args, **kwargs):
        attention_calls.append(1)
        return arena_module.grouped_query_attention(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, arena_module.ARENA_ATTENTION, counted_attention)
    cases = [(1, 1), (2, 1), (3, 2), (5, 1), (7, 3), (16, 2), (32, 4)]  # (rows, prefixes the region holds)
    for seed, (rows, prefix_videos) in enumerate(cases):
        order = random.Random(seed).sample(range(3), 3)
        arena = ArenaDecoder(model, processor, greedy(model, processor, 12), rows, BUDGET, prefix_videos, 12)
        assert arena_answers(arena, videos, order, advances_between=seed % 3) == expected, (rows, prefix_videos)
        assert not arena.videos and all(question is None for question in arena.in_row)  # all given back
        assert arena.arena.free_prefix == [(0, arena.arena.prefix_slots)]
    assert max(videos_per_step) == 3  # a step carried questions of every video
    assert len(attention_calls) >= len(videos_per_step) * model.config.get_text_config().num_hidden_layers
    assert model.model.language_model.config._attn_implementation == "sdpa"  # switched for the arena's passes only


@pytest.mark.slow
def test_repetition_penalty_and_each_questions_own_limit(demo_dirs, monkeypatch):
    # A checkpoint's repetition_penalty counts the prefix's tokens, the question's and the new ones, as generate
    # does for a question alone (in a left-padded batch, generate also penalizes the padding token in the rows
    # that have padding, so a row's answer there depends on its neighbours); a question added with its own limit
    # (a cognitive map's) stops there.
    model, processor, videos = model_and_videos(demo_dirs, "qwen2_5_vl", monkeypatch, questions=4)
    unpenalized = generate_answers(model, processor, videos, 12, one_by_one=True)
    model.generation_config.repetition_penalty = 1.5
    expected = generate_answers(model, processor, videos, 12, one_by_one=True)
    assert expected != unpenalized
    (prefix, texts), *_ = videos
    short = [generate_from_prefix(model, processor, prefix, [text], max_new_tokens=5)[0] for text in texts[:2]]

    arena = ArenaDecoder(model, processor, greedy(model, processor, 12), 4, BUDGET, 2, 12)
    arena.add(prefix, ["short 0", "short 1"], texts[:2], max_new_tokens=5)
    answers = arena_answers(arena, videos, [2, 0, 1], advances_between=1)
    assert [answers.pop(f"short {i}") for i in (0, 1)] == short
    assert answers == expected


@pytest.mark.slow
def test_a_small_budget_and_a_longer_question_resize_the_arena(demo_dirs, monkeypatch):
    model, processor, videos = model_and_videos(demo_dirs, "qwen2_5_vl", monkeypatch, questions=3)
    prefix, texts = videos[1]
    longer = prefix.text + " and once more," * 20 + texts[0][len(prefix.text) :]
    videos.append((prefix, [longer]))
    expected = generate_answers(model, processor, videos, 8)

    largest_prefix = max(p.inputs["input_ids"].shape[1] for p, _ in videos)
    arena = ArenaDecoder(model, processor, greedy(model, processor, 8), 16, largest_prefix + 400, 3, 8)
    sizes = []
    allocate = arena_module.Arena.__init__

    def recorded(self, text_model, rows, row_length, prefix_slots, *args):
        sizes.append((rows, row_length, prefix_slots))
        allocate(self, text_model, rows, row_length, prefix_slots, *args)

    monkeypatch.setattr(arena_module.Arena, "__init__", recorded)
    assert arena_answers(arena, videos, [1, 0, 2, 3], advances_between=2) == expected
    assert len(sizes) == 2 and sizes[1][1] > sizes[0][1]  # grown for the longer question, once the rows were free
    for rows, row_length, prefix_slots in sizes:  # within the budget: fewer rows, room for one prefix
        assert rows < 16 and prefix_slots + rows * row_length <= largest_prefix + 400


@pytest.mark.e2e
def test_a_failing_arena_leaves_no_question_unanswered_or_answered_twice(demo_dirs, tmp_path, monkeypatch):
    model_dir = demo_dirs("qwen2_5_vl") / "model"
    demo = model_dir.parent
    data = {"parquet_file": str(demo / "vsibench" / "test.parquet"), "video_dir": str(demo / "vsibench")}
    settings = {"batch_size": 8, "max_new_tokens": 8, "num_processes": 1, **data}
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(model_dir))
    reference = eval_qwen.evaluate(model, processor, output_dir_base=str(tmp_path / "hf"), decoder="hf", **settings)

    advance, calls = ArenaDecoder.advance, []

    def fails_on_the_fifth_call(self):
        calls.append(1)
        if len(calls) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")
        return advance(self)

    monkeypatch.setattr(ArenaDecoder, "advance", fails_on_the_fifth_call)
    summary = eval_qwen.evaluate(model, processor, output_dir_base=str(tmp_path / "fast"), **settings)
    run_dir = Path(summary["run_dir"])
    records = read_results(run_dir)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in read_results(Path(reference["run_dir"])))
    shard = [json.loads(line) for line in next((run_dir / "shards").glob("shard_*.jsonl")).read_text().splitlines()]
    assert len(shard) == len({r["id"] for r in shard}) == 40  # each question written once
    assert all(r["error"] is None for r in records)
    predictions = {r["id"]: r["prediction"] for r in read_results(Path(reference["run_dir"]))}
    assert {r["id"]: r["prediction"] for r in records} == predictions
    assert "decoding across videos failed" in (run_dir / "vsibench_eval_default.log").read_text()


@pytest.mark.e2e
def test_demo_at_batch_size_64_decodes_several_videos_per_step_with_the_answers_of_generate(demo_run):
    fast_dir = demo_run("qwen2_5_vl", "--batch_size", "64")
    hf_dir = demo_run("qwen2_5_vl", "--decoder", "hf")
    assert read_results(fast_dir) == read_results(hf_dir)
    summary, hf_summary = (json.loads((d / "summary.json").read_text()) for d in (fast_dir, hf_dir))
    assert summary["settings"]["batching"]["spans_videos"] and not hf_summary["settings"]["batching"]["spans_videos"]
    (worker,) = summary["workers"]
    per_video = max(Counter(record["scene_name"] for record in read_results(fast_dir)).values())
    assert worker["decoded_tokens"] / worker["decode_steps"] > per_video  # rows of several videos in a step
