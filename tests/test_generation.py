"""The shared-prefix path against the plain path, token for token, and the processor inputs."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from helpers import video_and_texts
from transformers import AutoConfig, AutoProcessor, Qwen2Config
from transformers.cache_utils import LinearAttentionLayer

from vsibench_eval.demo import tiny_models
from vsibench_eval.inputs.frames import load_video
from vsibench_eval.model.decode import FastDecoder
from vsibench_eval.model.generation import (
    StageTimer,
    chat_text,
    generate_from_prefix,
    generate_plain,
    load_model,
    prefill_prefix,
    prefix_inputs,
    processor_inputs,
    shared_prefix_text,
)
from vsibench_eval.model.prefix_cache import batch_cache, prefix_reuse_problem
from vsibench_eval.running.answering import video_answerer
from vsibench_eval.running.video_prep import PreparedPrefix
from vsibench_eval.settings.config import EvalConfig


def keep_step_logits(model) -> list:
    """Make model.generate also record each call's per-step logits [steps, B, vocab] in the returned list."""
    recorded, generate = [], model.generate

    def generate_keeping_logits(*args, **kwargs):
        output = generate(*args, **kwargs, return_dict_in_generate=True, output_logits=True)
        recorded.append(torch.stack(output.logits))
        return output.sequences

    model.generate = generate_keeping_logits
    return recorded


# The two paths add up the same numbers in another order, so float32 logits differ by about 1e-6.
TIE = 1e-4


def assert_same_answers(plain, shared, plain_logits, shared_logits):
    """The same answers. A row's answers may part only at a step where the plain path's two best tokens are
    within TIE of each other (rounding chooses between them there), and up to that step its logits agree within
    TIE. A random tiny model's logits lie close together, so such near-ties happen now and then."""
    for row, (plain_answer, shared_answer) in enumerate(zip(plain, shared, strict=True)):
        if plain_answer == shared_answer:
            continue
        steps = min(len(plain_logits), len(shared_logits))
        plain_tokens, shared_tokens = plain_logits[:steps, row].argmax(-1), shared_logits[:steps, row].argmax(-1)
        step = int((plain_tokens != shared_tokens).nonzero()[0])  # the first step where they part
        torch.testing.assert_close(shared_logits[: step + 1, row], plain_logits[: step + 1, row], atol=TIE, rtol=0)
        best, second = plain_logits[step, row].topk(2).values
        assert best - second < TIE, f"row {row}: {shared_answer!r} parts from {plain_answer!r} without a tie"


# Qwen4-Exp's indexer (transformers' reference code) loops over every prompt token in Python, so its test takes
# the first 4 questions of each video (still rows of different lengths in a batch); the others take all 10.
QUESTIONS_PER_VIDEO = {"qwen4_exp": 4}


@pytest.mark.slow
@pytest.mark.parametrize("family", tiny_models.FAMILIES)
@pytest.mark.parametrize("batch_size", [1, 4])
def test_shared_prefix_is_token_identical_to_plain(demo_dirs, family, batch_size):
    demo = demo_dirs(family)
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    timer = StageTimer(model)
    step_logits = keep_step_logits(model)
    for video_number in (0, 1):  # a 36 s video (32 frames) and an 8 s one (8 frames)
        video, texts = video_and_texts(demo, processor, video_number)
        texts = texts[: QUESTIONS_PER_VIDEO.get(family)]
        prefix = prefill_prefix(model, processor, video, shared_prefix_text(texts), "2.0")
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            plain = generate_plain(model, processor, video, batch, position_fps="2.0", max_new_tokens=6)
            shared = generate_from_prefix(model, processor, prefix, batch, max_new_tokens=6)
            assert_same_answers(plain, shared, *step_logits[-2:])
            assert any(answer.strip() for answer in plain)
    assert timer.seconds["vision_encoder"] > 0 and timer.seconds["generation"] > 0 and timer.prefill_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("position_fps", ["0.5", "sampled"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_shared_prefix_is_token_identical_at_other_time_codes(demo_dirs, position_fps, batch_size):
    # At position_fps 2.0 the time code is 1 s per temporal grid, transformers' own fallback, so a prefix path
    # that lost second_per_grid_ts would still agree; at 0.5 (4 s per grid) and at the sampled spacing of the
    # 8 s video's 8 frames (2 × 79 / 7 / 10 = 2.26 s per grid) it would not.
    demo = demo_dirs("qwen2_5_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    video, texts = video_and_texts(demo, processor, 1)
    texts = texts[:4]
    prefix = prefill_prefix(model, processor, video, shared_prefix_text(texts), position_fps)
    answers = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        plain = generate_plain(model, processor, video, batch, position_fps=position_fps, max_new_tokens=6)
        assert generate_from_prefix(model, processor, prefix, batch, max_new_tokens=6) == plain
        answers += plain
    # the time code reaches the answers: at 2.0 some of them differ
    assert answers != generate_plain(model, processor, video, texts, position_fps="2.0", max_new_tokens=6)


@pytest.mark.slow
def test_video_answerer_picks_the_shared_or_the_plain_path(demo_dirs):
    demo = demo_dirs("qwen2_5_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    video, texts = video_and_texts(demo, processor, 1)  # an 8 s video, 8 frames
    config = EvalConfig(position_fps="0.5", max_new_tokens=3)
    expected = generate_plain(model, processor, video, texts[:2], position_fps="0.5", max_new_tokens=3)
    timer = StageTimer(model)
    prefix_length = processor_inputs(processor, video, [shared_prefix_text(texts)], "0.5")["input_ids"].shape[1]
    batch_length = processor_inputs(processor, video, texts[:2], "0.5")["input_ids"].shape[1]  # left-padded

    # no video: no answerer, and the video's error
    assert video_answerer(model, processor, None, "video failed: gone", texts, config) == (None, "video failed: gone")

    # shared prefix: the video's prefix is prefilled here, once; a batch then prefills only its own tokens
    answer, error = video_answerer(model, processor, video, None, texts, config)
    assert error is None and timer.prefill_tokens == prefix_length
    assert answer(texts[:2]) == expected
    assert timer.prefill_tokens - prefix_length == 2 * (batch_length - prefix_length)

    # plain, as asked: nothing prefilled until a batch comes, then each full prompt
    timer.prefill_tokens = 0
    answer, error = video_answerer(model, processor, video, None, texts, replace(config, shared_prefix=False))
    assert error is None and timer.prefill_tokens == 0
    assert answer(texts[:2]) == expected and timer.prefill_tokens == 2 * batch_length

    # plain, because the texts share no video prefix (a per-question note before the video)
    noted = [text.replace("<|vision_start|>", f"Note {i}.<|vision_start|>", 1) for i, text in enumerate(texts)]
    timer.prefill_tokens = 0
    answer, error = video_answerer(model, processor, video, None, noted, config)
    assert error is None and timer.prefill_tokens == 0
    assert answer(noted[:2]) == generate_plain(model, processor, video, noted[:2], "0.5", max_new_tokens=3)

    # a prefix that cannot be computed is the video's error, and there is no answerer
    broken = replace(video, frames=video.frames[:, :100, :100])  # not a multiple of the patch size
    answer, error = video_answerer(model, processor, broken, None, texts, config)
    assert answer is None and error.startswith("video prefix failed: RuntimeError: shape ")

    # plain, with the fast decoder when one is given (token-identical to generate)
    decoder, rows = FastDecoder(model), []
    generate = decoder.generate

    def counted(input_ids, *args, **kwargs):
        rows.append(len(input_ids))
        return generate(input_ids, *args, **kwargs)

    decoder.generate = counted
    plain = replace(config, shared_prefix=False)
    answer, error = video_answerer(model, processor, video, None, texts, plain, decoder=decoder)
    assert answer(texts[:2]) == expected and rows == [2]

    # the frames as images, as asked
    images = [chat_text(processor, "How many chairs are in this room?", images=len(video.frames))]
    answer, error = video_answerer(model, processor, video, None, images, replace(config, video_input="images"))
    assert answer(images) == generate_plain(model, processor, video, images, "0.5", 3, video_input="images")


@pytest.mark.slow
def test_video_answerer_uses_prepared_inputs_and_times_its_stages(demo_dirs):
    demo = demo_dirs("qwen2_5_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    video, texts = video_and_texts(demo, processor, 1)
    config = EvalConfig(position_fps="0.5", max_new_tokens=3)
    expected = generate_plain(model, processor, video, texts[:2], position_fps="0.5", max_new_tokens=3)
    prefix_text = shared_prefix_text(texts)

    def answered_with(prepared, config=config):
        """(answers to two questions, the timer's seconds) of an answerer given `prepared` and a timer."""
        timer = StageTimer(model)
        answer, error = video_answerer(model, processor, video, None, texts, config, prepared=prepared, timer=timer)
        assert error is None
        answers = answer(texts[:2])
        timer.remove()
        return answers, timer.seconds

    # inputs a background thread prepared for this prefix: the processor does not run again
    prepared = PreparedPrefix(prefix_text, prefix_inputs(processor, video, prefix_text, "0.5"), 0.0)
    answers, seconds = answered_with(prepared)
    assert answers == expected and seconds["processor"] == 0 and seconds["host_to_device"] > 0

    # inputs prepared for another text (here a black video's) are not used: the processor runs on this prefix
    black = replace(video, frames=video.frames * 0)
    stale = PreparedPrefix(prefix_text + " ", prefix_inputs(processor, black, prefix_text, "0.5"), 0.0)
    answers, seconds = answered_with(stale)
    assert answers == expected and seconds["processor"] > 0 and seconds["host_to_device"] > 0

    # the plain path reports its processor and copy stages too
    answers, seconds = answered_with(None, replace(config, shared_prefix=False))
    assert answers == expected and seconds["processor"] > 0 and seconds["host_to_device"] > 0


def test_a_tie_is_the_only_excuse_for_different_answers():
    logits = torch.tensor([[[2.0, 1.0, 0.0]], [[0.5, 1.5, 1.5 - 5e-7]]])  # [steps 2, B 1, vocab 3]
    shared = logits.clone()
    shared[1, 0, 2] += 1e-6  # rounding lifts token 2 above token 1 at the second step
    assert_same_answers(["A B"], ["A C"], logits, shared)
    shared[0, 0, 0] -= 0.01  # the logits part before the answers do
    with pytest.raises(AssertionError, match="not close"):
        assert_same_answers(["A B"], ["A C"], logits, shared)
    logits[1, 0, 2] = 1.5 - 1.5e-4  # the two best tokens 1.5e-4 apart: no tie
    shared = logits.clone()
    shared[1, 0, 1:] += torch.tensor([-0.9e-4, 0.9e-4])
    with pytest.raises(AssertionError, match="without a tie"):
        assert_same_answers(["A B"], ["A C"], logits, shared)


@pytest.mark.slow
@pytest.mark.parametrize("family, video_number", [("qwen2_5_vl", 0), ("qwen3_5", 1)])
def test_shared_prefix_also_matches_with_transformers_positions(demo_dirs, family, video_number):
    demo = demo_dirs(family)
    model, processor, _ = load_model(str(demo / "model"), "cpu", mrope_positions="transformers")
    video, texts = video_and_texts(demo, processor, video_number)
    prefix = prefill_prefix(model, processor, video, shared_prefix_text(texts), "2.0")
    plain = generate_plain(model, processor, video, texts[:4], position_fps="2.0", max_new_tokens=6)
    assert generate_from_prefix(model, processor, prefix, texts[:4], max_new_tokens=6) == plain


def test_shared_prefix_text_ends_after_the_video_block():
    video = "<|vision_start|><|video_pad|><|vision_end|>"
    texts = [f"<|im_start|>user\n{video}Question:\nHow many {x}?<|im_end|>" for x in ("chairs", "cups")]
    assert shared_prefix_text(texts) == f"<|im_start|>user\n{video}"
    # a per-question text before the video: the video is not shared, so there is no video prefix
    assert shared_prefix_text([f"<|im_start|>user\nMap {i}\n{video}Q" for i in (1, 2)]) is None
    assert shared_prefix_text(["no video here", "no video there"]) is None
    # two videos in the shared start: the prefix holds both
    two = f"<|im_start|>user\n{video}and{video}"
    assert shared_prefix_text([f"{two}Question:\nHow many {x}?" for x in ("chairs", "cups")]) == two
    # an image block but no video in the shared start, or a video block the texts leave before its end
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert shared_prefix_text([f"{image}<|vision_start|><|video_pad|>{x}<|vision_end|>" for x in "ab"]) is None


@pytest.mark.slow
def test_shared_prefix_prefills_far_fewer_tokens(demo_dirs):
    demo = demo_dirs("qwen2_vl")
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    video, texts = video_and_texts(demo, processor, 0)
    timer = StageTimer(model)
    for text in texts:
        generate_plain(model, processor, video, [text], position_fps="2.0", max_new_tokens=1)
    plain_tokens, timer.prefill_tokens = timer.prefill_tokens, 0
    prefix = prefill_prefix(model, processor, video, shared_prefix_text(texts), "2.0")
    for text in texts:
        generate_from_prefix(model, processor, prefix, [text], max_new_tokens=1)
    prefix_length = prefix.inputs["input_ids"].shape[1]
    own = plain_tokens // len(texts) - prefix_length  # the average question's own tokens
    assert timer.prefill_tokens == prefix_length + plain_tokens - len(texts) * prefix_length
    assert own < prefix_length and timer.prefill_tokens < plain_tokens / 3


@pytest.mark.parametrize("position_fps, expected", [("2.0", 1.0), ("0.5", 4.0), ("sampled", None)])
def test_position_fps_sets_seconds_per_temporal_grid(demo_dirs, position_fps, expected):
    demo = demo_dirs("qwen2_5_vl")
    processor = AutoProcessor.from_pretrained(demo / "model")
    video_path = demo / "vsibench" / "scannetpp" / "0a5c013435.mp4"  # 20 s at 10 fps
    video = load_video(str(video_path), 32, 1.0, (448, 448), 28)  # 20 frames, 199 / 19 source frames apart
    inputs = processor_inputs(processor, video, [chat_text(processor, "How many chairs?")], position_fps)
    if expected is None:  # the real spacing of the sampled frames, 2 frames per temporal grid
        expected = 2 * 199 / 19 / 10
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([expected])
    assert isinstance(inputs["second_per_grid_ts"], torch.Tensor)


@pytest.mark.slow
def test_prefix_reuse_needs_cache_layers_it_can_pad(demo_dirs):
    for family in tiny_models.FAMILIES:
        config = AutoConfig.from_pretrained(demo_dirs(family) / "model")
        assert prefix_reuse_problem(SimpleNamespace(config=config)) is None, family
    layer_types = ["sliding_attention", "full_attention"]
    sliding = Qwen2Config(num_hidden_layers=2, layer_types=layer_types, use_sliding_window=True, sliding_window=8)
    problem = prefix_reuse_problem(SimpleNamespace(config=sliding))
    assert problem == "its cache has DynamicSlidingWindowLayer layers, which the shared prefix cannot pad exactly"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_5", "qwen4_exp"])
def test_a_batch_cache_is_as_long_as_its_attention_layers(demo_dirs, family):
    # generate() skips the first cache.get_seq_length() prompt tokens. transformers 5.25 takes that length from
    # layer 0, here a linear-attention layer with a token count of its own (5.24 asked the first attention layer):
    # rows of different lengths must not leave that count at the shortest row's.
    demo = demo_dirs(family)
    model, processor, _ = load_model(str(demo / "model"), "cpu")
    video, texts = video_and_texts(demo, processor, 1)
    prefix = prefill_prefix(model, processor, video, shared_prefix_text(texts), "2.0")
    own = [processor.tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("A", "B C D E F G", "H I")]
    grids = {"video_grid_thw": prefix.inputs["video_grid_thw"].repeat(len(own), 1)}
    cache = batch_cache(model, prefix.cache, prefix.inputs, own, grids)
    length = prefix.inputs["input_ids"].shape[1] + max(map(len, own)) - 1
    attention = [layer.keys.shape[2] for layer in cache.layers if not isinstance(layer, LinearAttentionLayer)]
    assert attention and set(attention) == {length}
    assert int(cache.get_seq_length()) == length
