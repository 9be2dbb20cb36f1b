"""One worker's job: answer a shard of questions video by video (decode -> prompts -> answers -> records),
appending each finished batch to its shard file. Imports generation, prefix_cache, qwen_vl_utils, prompts,
cogmap, report, run_directory, config.
"""

import json
import logging
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

import report
from cogmap import COGMAP_PROMPT, format_cognitive_map, parse_cognitive_map
from config import EvalConfig
from generation import (
    StageTimer,
    chat_text,
    generate_from_prefix,
    generate_plain,
    load_model,
    prefill_prefix,
    processor_inputs,
    shared_prefix_text,
)
from prefix_cache import prefix_reuse_problem
from prompts import build_prompt, load_prompt_template
from qwen_vl_utils import VideoError, VideoFrames, compare_positions, load_video
from run_directory import VIDEO_FAILED, setup_logging
from util import extract_answer, group_by_video


def evaluate_shard(
    rank: int,
    device: str,
    config: EvalConfig,
    questions: list[dict],
    done_ids: set[int],
    run_dir: str,
    compare_first: bool = False,  # log how transformers' positions compare with the published ones
) -> None:
    """A worker process: pin its device, then answer its shard (evaluate_questions); the parent learns of a
    failure from the exit status, and the log has the traceback."""
    if device.startswith("cuda"):
        # Pin this worker to its GPU before CUDA starts, whatever the id; inside, it is cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":")[1]
        device = "cuda:0"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.num_processes))
    run_dir = Path(run_dir)
    log = setup_logging(run_dir / f"vsibench_eval_{config.prompt_type}.log", console_level=logging.WARNING)
    try:
        evaluate_questions(rank, device, config, questions, done_ids, run_dir, log, compare_first)
    except KeyboardInterrupt:
        sys.exit(130)  # the parent reports the interruption; finished batches are on disk
    except BaseException:
        log.exception(f"worker {rank} (pid {os.getpid()}) failed")
        raise


@dataclass
class Worker:
    """What a worker process holds for its whole shard."""

    rank: int
    config: EvalConfig
    model: object
    processor: object
    template: dict | None  # the user's prompt template, for prompt_type custom
    log: logging.Logger


def evaluate_questions(rank, device, config, questions, done_ids, run_dir: Path, log, compare_first: bool) -> None:
    """Load the model, then answer the shard's unanswered questions video by video, appending each finished
    batch's records to shards/shard_{rank}.jsonl, and write the worker's report (device, timings)."""
    started = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()
    model, processor, info = load_model(config.model_name, device, config.mrope_positions, config.trust_remote_code)
    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    todo = [q for q in questions if q["id"] not in done_ids]
    log.info(
        f"worker {rank} (pid {os.getpid()}): {len(todo)} of {len(questions)} questions to answer, device {device} "
        f"({device_name}), dtype {info['dtype']}, attention {info['attention']}, "
        f"M-RoPE positions {info['mrope_positions']}, "
        f"model loaded in {time.perf_counter() - started:.1f}s"
    )
    problem = prefix_reuse_problem(model) if config.shared_prefix else None
    if problem:  # the plain path gives the answers the shared prefix would, only slower
        log.warning(f"worker {rank}: shared prefix off for this model: {problem}; every question takes the plain path")
        config = replace(config, shared_prefix=False)
    template = load_prompt_template(config.prompt_template_file) if config.prompt_template_file else None
    worker = Worker(rank, config, model, processor, template, log)
    timer = StageTimer(model)
    groups = {path: qs for path, qs in group_by_video(questions).items() if any(q["id"] not in done_ids for q in qs)}
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    video_seconds = 0.0
    with (
        open(run_dir / "shards" / f"shard_{rank}.jsonl", "a", encoding="utf-8") as shard,
        tqdm(total=len(todo), desc=f"worker {rank} ({device})", unit="q", position=rank, dynamic_ncols=True) as bar,
    ):
        for video_path, video, video_error, decode_seconds in decoded_videos(list(groups), config, factor):
            video_seconds += decode_seconds
            for records in answer_video(worker, groups[video_path], video, video_error, done_ids, compare_first):
                append_records(shard, records)
                bar.update(len(records))
            compare_first = compare_first and video is None  # the first video that decodes is compared

    elapsed = time.perf_counter() - started
    seconds = {"video_decoding": video_seconds, **timer.seconds, "total": elapsed}
    report = {"rank": rank, "device": device_name, "questions": len(todo), "videos": len(groups), **info}
    report |= {"seconds": {name: round(value, 3) for name, value in seconds.items()}}
    report["prefill_tokens"] = timer.prefill_tokens
    (run_dir / "shards" / f"worker_{rank}.json").write_text(json.dumps(report))
    log.info(
        f"worker {rank}: done, {len(todo)} questions in {elapsed:.1f}s ({len(todo) / elapsed:.2f} questions/s); "
        + ", ".join(f"{name} {value:.1f}s" for name, value in seconds.items() if name != "total")
        + f"; {timer.prefill_tokens} prefill tokens"
    )


def answer_video(worker: Worker, questions, video: VideoFrames | None, video_error, done_ids, compare_positions_first):
    """Yield the records of each finished batch of one video's questions (a failed video gives error records).

    Batches are the same fixed chunks of the video's questions in every run, so a resumed run skips the
    batches already written and recomputes a torn one whole: results equal those of an uninterrupted run.
    """
    config, log = worker.config, worker.log
    if video_error:
        log.error(f"worker {worker.rank}: {video_error}; its {len(questions)} questions score 0")
    prompts = question_prompts(worker, questions)
    texts = {qid: chat_text(worker.processor, prompt) for qid, prompt in prompts.items()}
    # The video's prefix is shared by the questions' texts and, when one is generated, the map's.
    map_text = chat_text(worker.processor, COGMAP_PROMPT) if needs_generated_map(config, questions) else None
    all_texts = [*texts.values(), *([map_text] if map_text else [])]
    answer_texts, video_error = video_answerer(worker.model, worker.processor, video, video_error, all_texts, config)
    if video_error and video is not None:
        log.error(f"worker {worker.rank}: {questions[0]['video_path']}: {video_error}")
    generate_map = None
    if map_text and not video_error:
        generate_map = partial(answer_texts, [map_text], max_new_tokens=config.cogmap_max_new_tokens)
    cogmaps = cognitive_maps(config, questions, generate_map)
    if config.use_cognitive_map:  # each question's map goes between the pre-prompt and the question
        prompts = question_prompts(worker, questions, cogmaps)
        texts = {qid: chat_text(worker.processor, prompt) for qid, prompt in prompts.items()}
    if compare_positions_first and not video_error:
        log_position_comparison(worker, video, questions[0]["id"], texts[questions[0]["id"]])

    for start in range(0, len(questions), config.batch_size):
        batch = questions[start : start + config.batch_size]
        if all(q["id"] in done_ids for q in batch):
            continue
        if video_error:
            answers = [("", video_error)] * len(batch)
        else:
            answers = answer_batch_or_error(worker, answer_texts, batch, [texts[q["id"]] for q in batch])
        yield [
            result_record(question, prompts[question["id"]], prediction, video, error, cogmaps[question["id"]])
            for question, (prediction, error) in zip(batch, answers, strict=True)
            if question["id"] not in done_ids
        ]


def question_prompts(worker: Worker, questions: list[dict], cogmaps: dict | None = None) -> dict[int, str]:
    """Each question's prompt text by id, with its cognitive map when `cogmaps` is given."""
    config = worker.config
    return {
        q["id"]: build_prompt(q, config.prompt_type, worker.template, cogmaps[q["id"]][0] if cogmaps else None)
        for q in questions
    }


def log_position_comparison(worker: Worker, video: VideoFrames, question_id: int, text: str) -> None:
    """Log whether transformers' own M-RoPE positions follow the published rule on this prompt."""
    inputs = processor_inputs(worker.processor, video, [text], worker.config.position_fps)
    comparison = compare_positions(worker.model, inputs.to(worker.model.device))
    worker.log.info(f"positions on the run's first prompt (id {question_id}): {comparison}")


def answer_batch_or_error(worker: Worker, answer_texts, batch: list[dict], texts: list[str]):
    """(prediction, error) per question; a failure is recorded on each question of the batch and logged with
    its traceback, and the run goes on."""
    try:
        return answer_batch(answer_texts, texts)
    except Exception as failure:
        error = f"generation failed: {type(failure).__name__}: {failure}"
        worker.log.exception(f"worker {worker.rank}: ids {[q['id'] for q in batch]}: {error}")
        return [("", error)] * len(batch)


def append_records(shard, records: list[dict]) -> None:
    """Append one batch's records to the shard file and flush, so a crash loses at most the batch in flight."""
    for record in records:
        shard.write(json.dumps(record, ensure_ascii=False) + "\n")
    shard.flush()


def decoded_videos(video_paths: list[str], config: EvalConfig, factor: int):
    """Yield (path, frames or None, error or None, decode seconds) per video, decoding the next video in a
    background thread while the caller works on the current one."""

    def decode(path: str):
        tick = time.perf_counter()
        try:
            frames = load_video(path, config.num_frames, config.fps, tuple(config.target_resolution), factor)
            return path, frames, None, time.perf_counter() - tick
        except VideoError as error:
            return path, None, f"{VIDEO_FAILED}: {error}", time.perf_counter() - tick

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(decode, video_paths[0]) if video_paths else None
        for next_path in [*video_paths[1:], None]:
            current = pending.result()
            pending = pool.submit(decode, next_path) if next_path else None
            yield current


def answer_batch(generate_batch, prompts: list[str]) -> list[tuple[str, str | None]]:
    """(prediction, error) per prompt. A batch that runs out of GPU memory is retried in halves, down to
    single questions, before the error is recorded."""
    try:
        return [(prediction, None) for prediction in generate_batch(prompts)]
    except torch.OutOfMemoryError as error:
        if len(prompts) == 1:
            return [("", f"out of memory: {error}")]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(prompts) // 2
        return answer_batch(generate_batch, prompts[:half]) + answer_batch(generate_batch, prompts[half:])


def video_answerer(model, processor, video: VideoFrames | None, video_error: str | None, texts, config):
    """A function answering a batch of this video's chat texts, and the video's error if it has one.

    With shared_prefix the video's encoder pass and shared prefix are computed here, once."""
    if video is None:
        return None, video_error
    plain = partial(generate_plain, model, processor, video, position_fps=config.position_fps)
    prefix_text = shared_prefix_text(texts) if config.shared_prefix else None
    if prefix_text is None:
        return partial(plain, max_new_tokens=config.max_new_tokens), None
    try:
        prefix = prefill_prefix(model, processor, video, prefix_text, config.position_fps)
    except Exception as failure:
        return None, f"video prefix failed: {type(failure).__name__}: {failure}"
    return partial(generate_from_prefix, model, processor, prefix, max_new_tokens=config.max_new_tokens), None


def needs_generated_map(config: EvalConfig, questions: list[dict]) -> bool:
    """Does this video need the model to write its cognitive map (some question has no offloaded one)?"""
    if not config.use_cognitive_map or (config.offload_cogmap and config.cogmap_fallback == "none"):
        return False
    return any(not q.get("offloaded_cogmap") for q in questions)


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
            (output,), error = generate_map(), None
        except Exception as failure:  # e.g. out of memory: the questions go on without a map
            output, error = "", f"{type(failure).__name__}: {failure}"
        parsed = parse_cognitive_map(output)
        if parsed:
            generated = (format_cognitive_map(parsed), "generated")
        else:
            scene = questions[0]["scene_name"]
            log.warning(f"{scene}: no readable cognitive map in the model's output ({error or output[:120]!r})")
    return {q["id"]: maps.get(q["id"], generated) for q in questions}


def result_record(
    question: dict, prompt: str, prediction: str, video: VideoFrames | None, error: str | None, cogmap: tuple
) -> dict:
    """One line of the results: the question, what was sent, what came back, its score and provenance."""
    record = {key: question[key] for key in ("id", "dataset", "scene_name", "question_type", "question")}
    record |= {
        "options": question["options"],
        "ground_truth": question["ground_truth"],
        "prompt": prompt,
        "prediction": prediction,
        "answer": extract_answer(prediction),
        "frame_indices": video.frame_indices if video else None,
        "frame_timestamps": video.timestamps if video else None,
        "video_duration": video.duration if video else None,
        "cogmap_source": cogmap[1],  # generated, offloaded or none
        "cognitive_map": cogmap[0],
        "error": error,
    }
    record["score"] = report.score_record(record, "official")  # the official rules
    record["score_lenient"] = report.score_record(record, "lenient")
    return record
