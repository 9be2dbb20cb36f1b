"""Answering one video's questions: its prompts, its cognitive map, balanced batches of questions, and each
batch's answers made into records; a batch that fails is split so that only the questions that fail get the
error. The worker (worker.py) runs this per video, or, where the fast decoder answers from shared prefixes,
decodes the questions of several videos together (continuous.py) and uses this for the videos it cannot.
"""

import logging
from dataclasses import dataclass
from functools import partial

import torch

from vsibench_eval.inputs.cogmap import format_cognitive_map, parse_cognitive_map
from vsibench_eval.inputs.frames import VideoFrames
from vsibench_eval.model.generation import (
    StageTimer,
    generate_from_prefix,
    generate_plain,
    prefill_prefix,
    processor_inputs,
    shared_prefix_text,
    video_token_count,
)
from vsibench_eval.model.positions import compare_positions
from vsibench_eval.model.served import ServerUnreachable
from vsibench_eval.run_dir.records import result_record
from vsibench_eval.running.video_prep import DecodedVideo, model_text, question_prompts, video_texts
from vsibench_eval.settings.config import EvalConfig


@dataclass
class Worker:
    """What a worker holds for its whole shard."""

    rank: int
    config: EvalConfig
    template: dict | None  # the user's prompt template, for prompt_type custom
    log: logging.Logger
    answerer: object  # (video, video error, texts, prepared) -> (a function answering a batch of texts, video error)
    factor: int  # frames' sides are multiples of it (the model's patch size x merge size)
    processor: object = None  # the model's processor; None for a served model (its server formats the chat)
    model: object = None  # the model in this process, if any
    timer: StageTimer | None = None  # where the time goes
    arena: object = None  # the fast decoder's arena (ArenaDecoder), when it decodes several videos' questions together


def answer_video(worker: Worker, questions, decoded: DecodedVideo, done_ids, compare_positions_first):
    """Yield the records of each finished batch of one video's questions (a failed video gives error records).

    The batches (question_batches) are the same in every run, so a resumed run skips the batches already
    written and recomputes a torn one whole: results equal those of an uninterrupted run.
    """
    config, log, video, video_error = worker.config, worker.log, decoded.video, decoded.error
    if video_error:
        log.error(f"worker {worker.rank}: {video_error}; its {len(questions)} questions score 0")
    images = len(video.frames) if video is not None and config.video_input == "images" else 0
    prompts, texts, map_text = video_texts(worker.config, worker.template, worker.processor, questions, images)
    all_texts = [*texts.values(), *([map_text] if map_text else [])]
    answer_texts, video_error = worker.answerer(video, video_error, all_texts, prepared=decoded.prefix)
    if video_error and video is not None:
        log.error(f"worker {worker.rank}: {questions[0]['video_path']}: {video_error}")
    generate_map = None
    if map_text and not video_error:
        generate_map = partial(answer_texts, [map_text], max_new_tokens=config.cogmap_max_new_tokens)
    cogmaps = cognitive_maps(config, questions, generate_map)
    if config.use_cognitive_map:  # each question's map goes between the pre-prompt and the question
        prompts = question_prompts(worker.config, worker.template, questions, cogmaps)
        texts = {qid: model_text(worker.processor, text, config.system_prompt, images) for qid, text in prompts.items()}
    if compare_positions_first and not video_error and worker.model is not None:
        log_position_comparison(worker, video, questions[0]["id"], texts[questions[0]["id"]])

    row_tokens = None
    if video is not None and worker.processor is not None:
        row_tokens = video_token_count(worker.processor, video, config.video_input) + config.max_new_tokens
    for rows in question_batches(len(questions), config.batch_size, config.batch_tokens, row_tokens):
        batch = questions[rows.start : rows.stop]
        if all(q["id"] in done_ids for q in batch):
            continue
        if video_error:
            answers = [("", video_error, {})] * len(batch)
        else:
            answers = answer_batch_or_error(worker, answer_texts, batch, [texts[q["id"]] for q in batch])
        yield [
            result_record(
                question, prompts[question["id"]], prediction, video, error, cogmaps[question["id"]], config.answer_span
            )
            | provenance
            for question, (prediction, error, provenance) in zip(batch, answers, strict=True)
            if question["id"] not in done_ids
        ]


def question_batches(count: int, batch_size: int, batch_tokens: int, row_tokens: int | None) -> list[range]:
    """The batches of a video's `count` questions: as few as `batch_size` rows and `batch_tokens` cache tokens
    (rows x `row_tokens`, when known) allow, in order, their sizes differing by at most one (no small tail).
    They depend only on the video and the settings, so every run forms the same ones (resume relies on it)."""
    most = batch_size if row_tokens is None else max(1, min(batch_size, batch_tokens // row_tokens))
    batches = -(-count // most)
    size, larger = divmod(count, batches) if count else (0, 0)
    starts = [b * size + min(b, larger) for b in range(batches + 1)]
    return [range(starts[b], starts[b + 1]) for b in range(batches)]


def log_position_comparison(worker: Worker, video: VideoFrames, question_id: int, text: str) -> None:
    """Log whether transformers' own M-RoPE positions follow the published rule on this prompt."""
    inputs = processor_inputs(worker.processor, video, [text], worker.config.position_fps, worker.config.video_input)
    comparison = compare_positions(worker.model, inputs.to(worker.model.device))
    worker.log.info(f"positions on the run's first prompt (id {question_id}): {comparison}")


def answer_batch_or_error(worker: Worker, answer_texts, batch: list[dict], texts: list[str]):
    """(prediction, error, provenance) per question (answer_batch); each question that failed is logged by id, and
    the run goes on (an unreachable server stops it: ServerUnreachable)."""
    answers = answer_batch(answer_texts, texts)
    for question, (_, error, _) in zip(batch, answers, strict=True):
        if error:
            worker.log.error(f"worker {worker.rank}: id {question['id']}: {error}")
    return answers


def answer_batch(generate_batch, prompts: list[str]) -> list[tuple[str, str | None, dict]]:
    """(prediction, error, provenance) per prompt: `generate_batch` gives a prediction per prompt, or that triple
    (a served model's). A batch that runs out of GPU memory is retried in halves, down to single questions, before
    the error is recorded. A batch that fails for any other reason (e.g. one question too long for the model) is
    retried one question at a time, so that only the questions that fail get the error; each such failure is
    logged with its traceback. A server that stays unreachable stops the run (ServerUnreachable)."""
    try:
        return [as_answer(output) for output in generate_batch(prompts)]
    except torch.OutOfMemoryError as error:
        if len(prompts) == 1:
            return [("", f"out of memory: {error}", {})]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(prompts) // 2
        return answer_batch(generate_batch, prompts[:half]) + answer_batch(generate_batch, prompts[half:])
    except ServerUnreachable:
        raise
    except Exception as failure:
        error = f"generation failed: {type(failure).__name__}: {failure}"
        retry = "; answering its questions one at a time" if len(prompts) > 1 else ""
        logging.getLogger("eval_qwen").warning(f"a batch of {len(prompts)}: {error}{retry}", exc_info=True)
        if len(prompts) == 1:
            return [("", error, {})]
        return [answer for prompt in prompts for answer in answer_batch(generate_batch, [prompt])]


def as_answer(output) -> tuple[str, str | None, dict]:
    """(prediction, error, provenance) of one output: a prediction text, or already that triple."""
    return output if isinstance(output, tuple) else (output, None, {})


def video_answerer(
    model,
    processor,
    video: VideoFrames | None,
    video_error: str | None,
    texts,
    config,
    decoding=None,
    decoder=None,
    prepared=None,
    timer=None,
):
    """A function answering a batch of this video's chat texts, and the video's error if it has one; `decoding`
    is the run's generation config (generation.decoding_config), `decoder` the plain path's fast decode loop when
    it applies (with a shared prefix, transformers' generate answers here; the fast decoder's arena answers such
    questions in continuous.py).

    With shared_prefix the video's encoder pass and shared prefix are computed here, once, from the `prepared`
    processor inputs when a background thread made them (PreparedPrefix). `timer`: a StageTimer."""
    if video is None:
        return None, video_error
    settings = {"max_new_tokens": config.max_new_tokens, "decoding": decoding}
    plain = partial(generate_plain, model, processor, video, position_fps=config.position_fps)
    plain = partial(plain, video_input=config.video_input)
    prefix_text = shared_prefix_text(texts) if config.shared_prefix else None
    if prefix_text is None:
        return partial(plain, **settings, decoder=decoder, timer=timer), None
    prefix, error = shared_prefix(model, processor, video, prefix_text, config.position_fps, prepared, timer)
    if error:
        return None, error
    return partial(generate_from_prefix, model, processor, prefix, **settings), None


def shared_prefix(model, processor, video: VideoFrames, prefix_text: str, position_fps: str, prepared, timer):
    """(the video's shared prefix, run through the model, None), or (None, why it failed); from the `prepared`
    processor inputs (PreparedPrefix) when a background thread made them for this text."""
    inputs = prepared.inputs if prepared is not None and prepared.text == prefix_text else None
    try:
        return prefill_prefix(model, processor, video, prefix_text, position_fps, inputs, timer), None
    except Exception as failure:
        return None, f"video prefix failed: {type(failure).__name__}: {failure}"


def cognitive_maps(config: EvalConfig, questions: list[dict], generate_map) -> dict[int, tuple[str | None, str]]:
    """(map text, source) of each question: its offloaded map, else the video's generated one (made once
    by `generate_map` when given), else (None, "none")."""
    if not config.use_cognitive_map:
        return {q["id"]: (None, "none") for q in questions}
    maps = {q["id"]: (q["offloaded_cogmap"], "offloaded") for q in questions if q.get("offloaded_cogmap")}
    generated = (None, "none")
    if generate_map is not None:
        log = logging.getLogger("eval_qwen")
        try:
            (output,) = generate_map()
            output, error, _ = as_answer(output)
        except ServerUnreachable:
            raise
        except Exception as failure:  # e.g. out of memory: the questions go on without a map
            output, error = "", f"{type(failure).__name__}: {failure}"
        parsed = parse_cognitive_map(output)
        if parsed:
            generated = (format_cognitive_map(parsed), "generated")
        else:
            scene = questions[0]["scene_name"]
            log.warning(f"{scene}: no readable cognitive map in the model's output ({error or output[:120]!r})")
    return {q["id"]: maps.get(q["id"], generated) for q in questions}
