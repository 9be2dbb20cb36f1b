"""One worker's job: answer a shard of questions (decode -> prompts -> answers -> records), appending each
finished batch of records to its shard file: video by video (answering.py), or, where the fast decoder answers
from shared prefixes, the questions of several videos decoded together (continuous.py). The CPU's work for the
next videos (video_prep.py) runs in background threads while the model answers the current ones. A spawned worker
process loads its model (evaluate_shard -> evaluate_questions); the Python API answers with a model the caller
holds, in its own process (evaluate_in_process); both then take the same steps (answer_shard). A served model
(backend openai) is asked through its server (answer_served_shard): the same videos, batches and records, another
answerer.
"""

import json
import logging
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import transformers

from vsibench_eval.inputs.prompts import load_prompt_template
from vsibench_eval.inputs.questions import group_by_video
from vsibench_eval.model.decode import FastDecoder, unsupported_reason
from vsibench_eval.model.families import patch_factor
from vsibench_eval.model.generation import (
    StageTimer,
    decoding_config,
    generation_settings,
    greedy,
    lent_model,
    load_model,
)
from vsibench_eval.model.hub import local_model_path
from vsibench_eval.model.prefix_cache import prefix_reuse_problem
from vsibench_eval.model.served import ServerUnreachable, served_worker
from vsibench_eval.run_dir.directory import setup_logging
from vsibench_eval.run_dir.files import ShardFile, WriteError, atomic_write
from vsibench_eval.running.answering import Worker, answer_video, video_answerer
from vsibench_eval.running.continuous import answer_videos_together, make_arena
from vsibench_eval.running.stopping import (
    SERVER_UNREACHABLE,
    WRITE_FAILED,
    Interrupted,
    parent_gone,
    pause_after_first_flush,
    stop_signals_interrupt,
    stop_with_parent,
)
from vsibench_eval.running.video_prep import decoded_videos, prepare_prefix, video_threads
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
        arena = None
        if decoder is not None and config.shared_prefix and config.video_input == "video":
            arena = make_arena(model, processor, config, decoding, timer, todo)
            log.info(
                f"worker {rank}: decoder fast, the questions of several videos decoded together: {arena.rows} rows, "
                f"prefixes of up to {arena.prefix_videos} videos, within {config.batch_tokens} cache slots"
            )
        else:
            log.info(f"worker {rank}: decoder {info['decoder']}")
        info["batches_span_videos"] = arena is not None
        settings = {"config": config, "decoding": decoding, "decoder": decoder, "timer": timer}
        answerer = partial(video_answerer, model, processor, **settings)
        factor = processor.video_processor.patch_size * processor.video_processor.merge_size
        worker = Worker(rank, config, template, log, answerer, factor, processor, model, timer, arena)
        video_seconds, waited = answer_videos(worker, questions, done_ids, run_dir, compare_first, device, len(todo))
    finally:
        timer.remove()  # a model lent by the caller keeps no hooks
    for fast in (decoder, arena):
        if fast is not None and fast.graph_failure:
            log.warning(f"worker {rank}: CUDA graphs turned off, decoding eagerly: {fast.graph_failure}")
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
    """Decode the videos (the next ones in background threads), answer them, and append each finished batch of
    records to the shard file. Returns the seconds spent decoding videos (in the background) and those the model
    waited for frames."""
    groups = {path: qs for path, qs in group_by_video(questions).items() if any(q["id"] not in done_ids for q in qs)}
    prepare = None
    if worker.model is not None:
        local, pin = threading.local(), device.startswith("cuda")
        prepare = partial(prepare_prefix, worker.config, worker.template, worker.processor, groups, local, pin)
    threads = video_threads(device, worker.config)
    worker.log.info(f"worker {worker.rank}: {threads} background threads prepare videos")
    seconds = {"video_decoding": 0.0, "waiting_for_frames": 0.0}

    def videos():
        for decoded in decoded_videos(list(groups), worker.config, worker.factor, prepare, threads):
            seconds["video_decoding"] += decoded.seconds
            seconds["waiting_for_frames"] += decoded.waited
            if decoded.waited >= WAIT_WORTH_LOGGING:
                idle = "the GPU" if device.startswith("cuda") else "the model"
                waited = f"{idle} waited {decoded.waited:.2f}s for the frames of {decoded.path}"
                worker.log.info(f"worker {worker.rank}: {waited}")
            if decoded.prefix is not None:
                worker.timer.add("processor", decoded.prefix.seconds)
            yield decoded

    if worker.arena is not None:
        batches = answer_videos_together(worker, videos(), groups, done_ids, compare_first)
    else:
        batches = answer_each_video(worker, videos(), groups, done_ids, compare_first)
    path_of = {q["id"]: path for path, qs in groups.items() for q in qs}
    left = {path: sum(q["id"] not in done_ids for q in qs) for path, qs in groups.items()}
    rank, answered, started = worker.rank, 0, time.perf_counter()
    with ShardFile(run_dir / "shards" / f"shard_{rank}.jsonl") as shard:  # the parent shows the run's progress
        for records in batches:
            if parent_gone():  # never append for a parent that is gone: a resume may own the run now
                raise Interrupted(signal.SIGTERM)
            shard.append(records)  # one write per batch: a crash loses at most the batches in flight
            pause_after_first_flush(rank)
            answered += len(records)
            for record in records:
                path = path_of[record["id"]]
                left[path] -= 1
                if left[path] == 0:
                    rate = answered / (time.perf_counter() - started)
                    worker.log.info(f"worker {rank}: {path} done; {answered}/{todo} questions, {rate:.2f} questions/s")
    return seconds["video_decoding"], seconds["waiting_for_frames"]


def answer_each_video(worker: Worker, videos, groups: dict, done_ids, compare_first: bool):
    """Yield the records of each finished batch, video by video (answering.answer_video)."""
    for decoded in videos:
        yield from answer_video(worker, groups[decoded.path], decoded, done_ids, compare_first)
        compare_first = compare_first and decoded.video is None  # the first video that decodes is compared


def choose_decoder(model, processor, config: EvalConfig, decoding, timer) -> tuple[FastDecoder | None, str]:
    """The fast decoder when the config asks for it and it applies to this model and these settings
    (`decoding`: the run's generation config)."""
    if config.decoder != "fast":
        return None, "hf"
    reason = unsupported_reason(model, greedy(model, processor, config.max_new_tokens, decoding))
    if reason:
        return None, f"hf (fast not used: {reason})"
    return FastDecoder(model, timer=timer), "fast"
