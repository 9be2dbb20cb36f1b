"""One worker's job: answer a shard of questions video by video (decode -> prompts -> answers -> records),
appending each finished batch to its shard file. The CPU's work for the next videos (video_prep.py) runs in
background threads while the model answers the current one. A spawned worker process loads its model
(evaluate_shard -> evaluate_questions); the Python API answers with a model the caller holds, in its own process
(evaluate_in_process); both then take the same steps (answer_shard). A served model (backend openai) is asked
through its server (answer_served_shard): the same videos, batches and records, another answerer.
"""

import json
import logging
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import transformers

from vsibench_eval.inputs.cogmap import format_cognitive_map, parse_cognitive_map
from vsibench_eval.inputs.frames import VideoFrames
from vsibench_eval.inputs.prompts import load_prompt_template
from vsibench_eval.inputs.questions import group_by_video
from vsibench_eval.model.decode import FastDecoder, unsupported_reason
from vsibench_eval.model.families import patch_factor
from vsibench_eval.model.generation import (
    StageTimer,
    decoding_config,
    generate_from_prefix,
    generate_plain,
    generation_settings,
    greedy,
    lent_model,
    load_model,
    prefill_prefix,
    processor_inputs,
    shared_prefix_text,
    video_token_count,
)
from vsibench_eval.model.hub import local_model_path
from vsibench_eval.model.positions import compare_positions
from vsibench_eval.model.prefix_cache import prefix_reuse_problem
from vsibench_eval.model.served import ServerUnreachable, served_worker
from vsibench_eval.run_dir.directory import setup_logging
from vsibench_eval.run_dir.files import ShardFile, WriteError, atomic_write
from vsibench_eval.run_dir.records import result_record
from vsibench_eval.running.stopping import (
    SERVER_UNREACHABLE,
    WRITE_FAILED,
    Interrupted,
    parent_gone,
    pause_after_first_flush,
    stop_signals_interrupt,
    stop_with_parent,
)
from vsibench_eval.running.video_prep import (
    DecodedVideo,
    decoded_videos,
    model_text,
    prepare_prefix,
    question_prompts,
    video_texts,
    video_threads,
)
from vsibench_eval.settings.config import EvalConfig


def evaluate_shard(
    rank: int,
    device: str,
    config: EvalConfig,
    questions: list[dict],
    done_ids: set[int],
    run_dir: str,
    compare_first: bool = False,  # log how transformers' positions compare with the published ones
    parent_pid: int | None = None,  # the launching process: this worker stops when it dies
) -> None:
    """A worker process: pin its device, then answer its shard (evaluate_questions). It stops, its finished
    batches kept, on SIGINT, SIGTERM or SIGHUP, when its parent dies, or when a write fails; the parent learns
    why from the exit status (128 + signal, WRITE_FAILED, 1 with the traceback in the log)."""
    if parent_pid is not None:
        stop_with_parent(parent_pid)
    if device.startswith("cuda"):
        # Pin this worker to its GPU before CUDA starts, whatever the id; inside, it is cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":")[1]
        device = "cuda:0"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.num_processes))
    run_dir = Path(run_dir)
    log = setup_logging(run_dir / f"vsibench_eval_{config.prompt_type}.log", console_level=logging.WARNING)
    with stop_signals_interrupt():
        try:
            evaluate_questions(rank, device, config, questions, done_ids, run_dir, log, compare_first)
        except Interrupted as stop:
            gone = stop.signal_name == "SIGTERM" and parent_gone(wait_seconds=0.5)
            why = f"its parent process {parent_pid} is gone" if gone else f"interrupted by {stop.signal_name}"
            log.warning(f"worker {rank}: {why}; stopping, its finished batches are kept")
            sys.exit(stop.status)
        except WriteError as error:
            log.error(f"worker {rank}: {error}; stopping, its finished batches are kept")
            sys.exit(WRITE_FAILED)
        except ServerUnreachable as error:  # an outage is not a score: the questions left wait for a resume
            log.error(f"worker {rank}: the server is unreachable ({error}); stopping, its finished batches are kept")
            sys.exit(SERVER_UNREACHABLE)
        except BaseException:
            log.exception(f"worker {rank} (pid {os.getpid()}) failed")
            raise


WAIT_WORTH_LOGGING = 0.1  # seconds the model may wait for a video's frames before the log says so


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


def evaluate_questions(rank, device, config, questions, done_ids, run_dir: Path, log, compare_first: bool) -> None:
    """Load the model (a Hub id from the snapshot the parent resolved), then answer the shard (answer_shard); or,
    for a served model, answer it through its server (answer_served_shard)."""
    started = time.perf_counter()
    if config.backend == "openai":
        return answer_served_shard(rank, config, questions, done_ids, run_dir, log, started)
    transformers.utils.logging.disable_progress_bar()
    path = local_model_path(config.model_name, config.model_revision)
    model, processor, info = load_model(path, device, config.mrope_positions, config.trust_remote_code)
    log.info(f"worker {rank}: model {path} loaded in {time.perf_counter() - started:.1f}s")
    answer_shard(rank, model, processor, info, config, questions, done_ids, run_dir, log, compare_first, started)


def evaluate_in_process(model, processor, config, questions, done_ids, run_dir: Path, log) -> None:
    """Answer every question in this process with a model and processor the caller holds, on the model's device,
    without reloading it; its train/eval mode, grad mode, padding side and positions are restored afterwards."""
    started = time.perf_counter()
    with lent_model(model, processor, config.mrope_positions) as info:
        answer_shard(0, model, processor, info, config, questions, done_ids, run_dir, log, True, started)


def answer_shard(rank, model, processor, info, config, questions, done_ids, run_dir: Path, log, compare_first, started):
    """Answer the shard's unanswered questions video by video, appending each finished batch's records to
    shards/shard_{rank}.jsonl, and write the worker's report (device, timings). `info`: load_model's."""
    device = str(model.device)
    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    todo = [q for q in questions if q["id"] not in done_ids]
    log.info(
        f"worker {rank} (pid {os.getpid()}): {len(todo)} of {len(questions)} questions to answer, device {device} "
        f"({device_name}), dtype {info['dtype']}, attention {info['attention']} "
        f"(vision encoder: {info['vision_attention']}), "
        f"M-RoPE positions {info['mrope_positions']}"
    )
    problem = prefix_reuse_problem(model) if config.shared_prefix else None
    if problem:  # the plain path gives the answers the shared prefix would, only slower
        log.warning(f"worker {rank}: shared prefix off for this model: {problem}; every question takes the plain path")
        config = replace(config, shared_prefix=False)
    if config.shared_prefix and config.video_input == "images":
        log.info(f"worker {rank}: video_input images: every question takes the plain path (a prefix holds a video)")
    template = load_prompt_template(config.prompt_template_file) if config.prompt_template_file else None
    decoding = decoding_config(model, processor, config.repetition_penalty, config.eos_tokens)
    info["generation"] = generation_settings(greedy(model, processor, config.max_new_tokens, decoding))
    log.info(f"worker {rank}: generation settings in force: {json.dumps(info['generation'])}")
    timer = StageTimer(model)
    try:
        decoder, info["decoder"] = choose_decoder(model, processor, config, decoding, timer)
        log.info(f"worker {rank}: decoder {info['decoder']}")
        settings = {"config": config, "decoding": decoding, "decoder": decoder, "timer": timer}
        answerer = partial(video_answerer, model, processor, **settings)
        factor = processor.video_processor.patch_size * processor.video_processor.merge_size
        worker = Worker(rank, config, template, log, answerer, factor, processor, model, timer)
        video_seconds, waited = answer_videos(worker, questions, done_ids, run_dir, compare_first, device, len(todo))
    finally:
        timer.remove()  # a model lent by the caller keeps no hooks
    if decoder is not None and decoder.graph_failure:
        log.warning(f"worker {rank}: CUDA graphs turned off, decoding eagerly: {decoder.graph_failure}")
    info |= {"device": device_name, "prefill_tokens": timer.prefill_tokens}
    info |= {"decode_steps": timer.decode_steps, "decoded_tokens": timer.decoded_tokens}
    seconds = {"video_decoding": video_seconds, **timer.seconds, "waiting_for_frames": waited}
    write_report(rank, run_dir, log, todo, info, seconds, started)


def answer_served_shard(rank, config, questions, done_ids, run_dir: Path, log, started) -> None:
    """answer_shard for a model behind an OpenAI-compatible server (model/served.py): the same videos, prompts,
    batches and records; the settings the server decides instead of the protocol are logged as deviations."""
    todo = [q for q in questions if q["id"] not in done_ids]
    answerer, info, deviations = served_worker(config)
    log.info(f"worker {rank}: {len(todo)} of {len(questions)} questions to answer through {config.api_base}")
    for line in deviations:
        log.warning(f"worker {rank}: deviation: {line}")
    template = load_prompt_template(config.prompt_template_file) if config.prompt_template_file else None
    worker = Worker(rank, config, template, log, answerer, patch_factor(config.served_model_type))
    video_seconds, waited = answer_videos(worker, questions, done_ids, run_dir, False, "cpu", len(todo))
    info |= {"server_model": sorted(answerer.server_models)}
    write_report(
        rank, run_dir, log, todo, info, {"video_decoding": video_seconds, "waiting_for_frames": waited}, started
    )


def write_report(rank, run_dir: Path, log, todo: list[dict], info: dict, seconds: dict, started: float) -> None:
    """The worker's report, shards/worker_{rank}.json (device, settings, where the time went), and its last log line."""
    elapsed = time.perf_counter() - started
    seconds["total"] = elapsed
    videos = len({q["video_path"] for q in todo})
    report = {"rank": rank, "questions": len(todo), "videos": videos, **info}
    report |= {"seconds": {name: round(value, 3) for name, value in seconds.items()}}
    atomic_write(run_dir / "shards" / f"worker_{rank}.json", json.dumps(report))
    log.info(
        f"worker {rank}: done, {len(todo)} questions in {elapsed:.1f}s ({len(todo) / elapsed:.2f} questions/s); "
        + ", ".join(f"{name} {value:.1f}s" for name, value in seconds.items() if name != "total")
        + (f"; {info['prefill_tokens']} prefill tokens" if "prefill_tokens" in info else "")
        + (
            f"; {info['decode_steps']} decode steps carrying {info['decoded_tokens']} rows "
            f"({info['decoded_tokens'] / max(1, info['decode_steps']):.1f} per step)"
            if "decode_steps" in info
            else ""
        )
    )


def answer_videos(worker: Worker, questions, done_ids, run_dir: Path, compare_first, device: str, todo: int):
    """The per-video loop: decode (next videos in background threads) -> answers -> one shard append per batch.
    Returns the seconds spent decoding videos (in the background) and those the model waited for frames."""
    groups = {path: qs for path, qs in group_by_video(questions).items() if any(q["id"] not in done_ids for q in qs)}
    prepare = None
    if worker.model is not None:
        local, pin = threading.local(), device.startswith("cuda")
        prepare = partial(prepare_prefix, worker.config, worker.template, worker.processor, groups, local, pin)
    threads = video_threads(device, worker.config)
    worker.log.info(f"worker {worker.rank}: {threads} background threads prepare videos")
    video_seconds, waited, rank, answered, started = 0.0, 0.0, worker.rank, 0, time.perf_counter()
    with ShardFile(run_dir / "shards" / f"shard_{rank}.jsonl") as shard:  # the parent shows the run's progress
        for decoded in decoded_videos(list(groups), worker.config, worker.factor, prepare, threads):
            video_seconds += decoded.seconds
            waited += decoded.waited
            if decoded.waited >= WAIT_WORTH_LOGGING:
                idle = "the GPU" if device.startswith("cuda") else "the model"
                worker.log.info(f"worker {rank}: {idle} waited {decoded.waited:.2f}s for the frames of {decoded.path}")
            if decoded.prefix is not None:
                worker.timer.add("processor", decoded.prefix.seconds)
            for records in answer_video(worker, groups[decoded.path], decoded, done_ids, compare_first):
                if parent_gone():  # never append for a parent that is gone: a resume may own the run now
                    raise Interrupted(signal.SIGTERM)
                shard.append(records)  # one write per batch: a crash loses at most the batch in flight
                pause_after_first_flush(rank)
                answered += len(records)
            rate = answered / (time.perf_counter() - started)
            worker.log.info(f"worker {rank}: {decoded.path} done; {answered}/{todo} questions, {rate:.2f} questions/s")
            compare_first = compare_first and decoded.video is None  # the first video that decodes is compared
    return video_seconds, waited


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


def choose_decoder(model, processor, config: EvalConfig, decoding, timer) -> tuple[FastDecoder | None, str]:
    """The fast decoder when the config asks for it and it applies to this model and these settings
    (`decoding`: the run's generation config)."""
    if config.decoder != "fast":
        return None, "hf"
    reason = unsupported_reason(model, greedy(model, processor, config.max_new_tokens, decoding))
    if reason:
        return None, f"hf (fast not used: {reason})"
    return FastDecoder(model, timer=timer), "fast"


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
    is the run's generation config (generation.decoding_config), `decoder` the fast decode loop when it applies.

    With shared_prefix the video's encoder pass and shared prefix are computed here, once, from the `prepared`
    processor inputs when a background thread made them (PreparedPrefix). `timer`: a StageTimer."""
    if video is None:
        return None, video_error
    settings = {"max_new_tokens": config.max_new_tokens, "decoding": decoding, "decoder": decoder}
    plain = partial(generate_plain, model, processor, video, position_fps=config.position_fps)
    plain = partial(plain, video_input=config.video_input)
    prefix_text = shared_prefix_text(texts) if config.shared_prefix else None
    if prefix_text is None:
        return partial(plain, **settings, timer=timer), None
    inputs = prepared.inputs if prepared is not None and prepared.text == prefix_text else None
    try:
        prefix = prefill_prefix(model, processor, video, prefix_text, config.position_fps, inputs, timer)
    except Exception as failure:
        return None, f"video prefix failed: {type(failure).__name__}: {failure}"
    return partial(generate_from_prefix, model, processor, prefix, **settings), None


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
