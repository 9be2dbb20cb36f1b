"""The plain path's fast decoder (decode.py) against transformers' generate, token for token, and the worker's
batching and background video preparation. The shared-prefix path's arena: test_arena.py."""

import json
from collections import Counter
from functools import partial

import pytest
import torch
from helpers import answer_tokens, read_results, video_and_texts

from vsibench_eval.inputs.questions import group_by_video, load_questions
from vsibench_eval.model import decode
from vsibench_eval.model.decode import FastDecoder, unsupported_reason
from vsibench_eval.model.generation import (
    StageTimer,
    generate_plain,
    greedy,
    load_model,
    prefix_inputs,
    shared_prefix_text,
)
from vsibench_eval.running import answering, video_prep
from vsibench_eval.settings.config import EvalConfig
from vsibench_eval.settings.protocols import apply_protocol


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_fast_decoder_is_token_identical_to_generate(demo_dirs, family, monkeypatch):
    demo = demo_dirs(family)
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    assert unsupported_reason(model, greedy(model, processor, 10)) is None
    answer_tokens(model, processor, monkeypatch)
    decoder = FastDecoder(model)
    for video_number in (0, 1):  # a 36 s video (32 frames) and an 8 s one (8 frames)
        video, texts = video_and_texts(demo, processor, video_number)
        for batch in (texts[:1], texts[1:6]):  # one row, and five rows of different lengths (left padding)
            expected = generate_plain(model, processor, video, batch, "2.0", max_new_tokens=10)
            assert generate_plain(model, processor, video, batch, "2.0", 10, decoder=decoder) == expected
            assert all(len(row) >= 2 for row in expected)


def common_tokens(model, processor, video, texts, count):
    """Tokens the model often generates for these texts (after their first two)."""
    answers = generate_plain(model, processor, video, texts, "2.0", max_new_tokens=16)
    return [token for token, _ in Counter(t for row in answers for t in row[2:]).most_common(count)]


@pytest.mark.slow
def test_rows_that_end_early_are_dropped_and_answers_stay_identical(demo_dirs, monkeypatch):
    demo = demo_dirs("qwen2_5_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    answer_tokens(model, processor, monkeypatch)
    video, texts = video_and_texts(demo, processor, 0)
    batch = texts[:8]
    # A token the random model often writes becomes an end token too, so rows end at different steps.
    end = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [end, *common_tokens(model, processor, video, batch, 1)]
    answer_tokens(model, processor, monkeypatch)
    expected = generate_plain(model, processor, video, batch, "2.0", max_new_tokens=16)
    lengths = sorted(len(row) for row in expected)
    assert lengths[0] < 16 and lengths[3] < lengths[-1] == 16  # half the rows end early, at least one runs on

    decoder = FastDecoder(model)
    drops = []
    monkeypatch.setattr(decoder, "_drop_finished", partial(spy, drops, decoder._drop_finished))
    assert generate_plain(model, processor, video, batch, "2.0", 16, decoder=decoder) == expected
    assert drops and drops[0] < 8  # the batch shrank


def spy(calls, function, slot, active, *args):
    calls.append(len(active))
    return function(slot, active, *args)


@pytest.mark.slow
def test_repetition_penalty_from_the_checkpoint_is_applied(demo_dirs, monkeypatch):
    # The real Qwen2.5-VL checkpoints set repetition_penalty in generation_config.json; generate() applies it
    # although greedy() does not set it, and so must the fast decoder. It counts the prompt's tokens (padding
    # excluded) and the new ones, as generate() does for left-padded prompts (the plain path).
    demo = demo_dirs("qwen2_5_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    answer_tokens(model, processor, monkeypatch)
    video, texts = video_and_texts(demo, processor, 0)
    batch = texts[:4]
    unpenalized = generate_plain(model, processor, video, batch, "2.0", max_new_tokens=12)
    model.generation_config.repetition_penalty = 1.5
    expected = generate_plain(model, processor, video, batch, "2.0", max_new_tokens=12)
    assert expected != unpenalized
    decoder = FastDecoder(model)
    assert generate_plain(model, processor, video, batch, "2.0", 12, decoder=decoder) == expected


@pytest.mark.slow
def test_out_of_memory_frees_the_cache_and_the_batch_is_split(demo_dirs, monkeypatch):
    demo = demo_dirs("qwen2_5_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    video, texts = video_and_texts(demo, processor, 1)
    expected = generate_plain(model, processor, video, texts[:4], "2.0", max_new_tokens=6)
    decoder = FastDecoder(model)
    prefill = decoder._prefill

    def fits_two_rows(slot, input_ids, *args):
        if input_ids.shape[0] > 2:
            assert decoder.arena  # the cache was allocated for the big batch, and must be given back
            raise torch.OutOfMemoryError("CUDA out of memory")
        return prefill(slot, input_ids, *args)

    monkeypatch.setattr(decoder, "_prefill", fits_two_rows)
    answer = partial(generate_plain, model, processor, video, position_fps="2.0", max_new_tokens=6, decoder=decoder)
    assert answering.answer_batch(answer, texts[:4]) == [(text, None, {}) for text in expected]
    ((rows, length),) = {key[:2] for key in decoder.slots}  # only shapes made after the memory was given back
    assert rows == 2 and decoder.arena_tokens == 2 * length


@pytest.mark.slow
def test_compiled_step_gives_the_same_tokens(demo_dirs, monkeypatch):
    # torch.compile traces the very step the eager loop runs (inductor's code generation takes minutes on
    # two cores, so dynamo's own backend stands in for it here).
    demo = demo_dirs("qwen2_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    answer_tokens(model, processor, monkeypatch)
    video, texts = video_and_texts(demo, processor, 1)
    decoder = FastDecoder(model)
    decoder.step = torch.compile(decoder._step, dynamic=True, backend="eager")
    for batch in (texts[:4], texts[4:6]):
        expected = generate_plain(model, processor, video, batch, "2.0", max_new_tokens=8)
        assert generate_plain(model, processor, video, batch, "2.0", 8, decoder=decoder) == expected


def test_unsupported_models_and_settings_are_named(demo_dirs):
    model, processor, _ = load_model(str(demo_dirs("qwen2_vl") / "model"), "cpu")
    assert unsupported_reason(model, greedy(model, processor, 8)) is None
    sampling = greedy(model, processor, 8)
    sampling.do_sample = True
    assert "do_sample" in unsupported_reason(model, sampling)
    text_config = model.config.get_text_config()
    text_config.layer_types = ["linear_attention", "full_attention"]  # e.g. Qwen3.5's hybrid layers
    assert "linear_attention" in unsupported_reason(model, greedy(model, processor, 8))
    model.config.model_type = "qwen3_5"
    assert "qwen3_5" in unsupported_reason(model, greedy(model, processor, 8))


@pytest.mark.parametrize(
    "count, batch_size, batch_tokens, row_tokens, sizes",
    [
        (18, 8, 10**6, 3584, [6, 6, 6]),  # no small tail batch
        (18, 32, 131072, 3584, [18]),  # all of a video's questions in one batch
        (18, 32, 40000, 3584, [9, 9]),  # 11 rows fit the token budget
        (5, 2, 10**6, None, [2, 2, 1]),
        (7, 32, 100, 3584, [1] * 7),  # one row always fits
    ],
)
def test_question_batches(count, batch_size, batch_tokens, row_tokens, sizes):
    batches = answering.question_batches(count, batch_size, batch_tokens, row_tokens)
    assert [len(b) for b in batches] == sizes
    assert [i for b in batches for i in b] == list(range(count))  # in order, each question once


@pytest.mark.slow
def test_background_threads_prepare_videos_in_order(demo_dirs, monkeypatch):
    demo = demo_dirs("qwen2_5_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    questions = load_questions(str(demo / "vsibench" / "test.parquet"), str(demo / "vsibench"))
    groups = group_by_video(questions)
    config = EvalConfig(num_frames=32, fps=1.0, target_resolution=[448, 448], prompt_type="official")
    apply_protocol(config, "qwen2_5_vl")  # protocol none: every other setting its default
    prepare = partial(video_prep.prepare_prefix, config, None, processor, groups, video_prep.threading.local(), False)
    decoded = list(video_prep.decoded_videos(list(groups), config, 28, prepare, threads=3))
    assert [d.path for d in decoded] == list(groups)
    for item in decoded:
        _, texts, _ = video_prep.video_texts(config, None, processor, groups[item.path])
        text = shared_prefix_text(list(texts.values()))
        expected = prefix_inputs(processor, item.video, text, config.position_fps)
        assert item.prefix.text == text and item.error is None
        assert torch.equal(item.prefix.inputs["pixel_values_videos"], expected["pixel_values_videos"])
        assert torch.equal(item.prefix.inputs["input_ids"], expected["input_ids"])


def test_stage_timer_adds_up_stages_without_waiting():
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.visual, model.model.language_model = torch.nn.Identity(), torch.nn.Identity()
    model.device = torch.device("cpu")
    timer = StageTimer(model)
    with timer.stage("generation"):
        sum(range(10**5))
    assert timer.seconds["generation"] > 0 and timer.seconds["prefill"] == 0


@pytest.mark.e2e
def test_demo_run_is_the_same_with_either_decoder(demo_run):
    fast_dir, hf_dir = demo_run("qwen2_5_vl"), demo_run("qwen2_5_vl", "--decoder", "hf")
    assert read_results(fast_dir) == read_results(hf_dir)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (fast_dir, hf_dir)]
    assert summaries[0]["settings"]["decoder"] == ["fast"] and summaries[1]["settings"]["decoder"] == ["hf"]
    (fast,), (hf,) = (summary["workers"] for summary in summaries)
    for worker_report in (fast, hf):
        assert worker_report["vision_attention"] == "packed" and "waiting_for_frames" in worker_report["seconds"]
        assert 0 < worker_report["decode_steps"] <= worker_report["decoded_tokens"]
    assert fast["prefill_tokens"] < hf["prefill_tokens"]  # packed: no padding between a video's questions
    assert fast["decoded_tokens"] <= hf["decoded_tokens"]  # finished rows dropped


def test_graph_rows_and_lengths():
    assert [decode.graph_rows(n) for n in (1, 2, 3, 5, 8, 9, 18, 33)] == [1, 2, 4, 8, 8, 16, 24, 40]
    assert decode.round_up(3100, 256) == 3328 and decode.round_up(256, 256) == 256
