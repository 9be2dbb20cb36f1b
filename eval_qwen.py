"""Evaluate a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL or a fine-tune) on VSI-Bench.

Edit the config in the `__main__` block at the bottom, then run

    python eval_qwen.py                       # with the values set there
    python eval_qwen.py --num_frames 16       # any field can be overridden as --field_name value
    python eval_qwen.py --demo                # tiny random model on a synthetic set, CPU, under a minute

Data flow: data file -> question records -> shards grouped by video (one worker process each)
-> frames -> prompts -> generations -> shard JSONL -> merged results JSONL -> scores -> log and summary.
"""

import json
import logging
import multiprocessing as mp
import os
import platform
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import transformers
from tqdm import tqdm
from transformers import HfArgumentParser

import vsibench_acc
from cogmap import COGMAP_PROMPT, format_cognitive_map, load_offloaded_maps, offloaded_map, parse_cognitive_map
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
from qwen_vl_utils import QWEN_VL_MODEL_TYPES, VideoError, VideoFrames, compare_positions, load_video
from util import (
    DataError,
    build_prompt,
    debug_subset,
    extract_answer,
    group_by_video,
    load_prompt_template,
    load_questions,
    select_question_types,
    select_subset,
    shard_by_video,
    write_jsonl,
)


@dataclass
class EvalConfig:
    parquet_file: str = "data/vsibench/test.parquet"  # the VSI-Bench test parquet
    data_file: str | None = None  # used instead of parquet_file when set: .parquet, or Spatial-R1 .json/.jsonl
    video_dir: str = "data/vsibench"  # video of a row: {video_dir}/{dataset}/{scene_name}.mp4 (SR data: relative)
    subset: Literal["full", "debiased", "pruned"] = "full"  # by the parquet's `pruned` column or subset_ids_file
    subset_ids_file: str | None = None  # ids of the questions to evaluate (.txt, .json, .jsonl, .csv, .parquet)
    question_types: list[str] = field(default_factory=list)  # only these question types (all when empty)
    output_dir_base: str = "results"  # run dir: {output_dir_base}/{model basename}/{YYYYmmdd_HHMMSS}/
    model_name: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # local checkpoint folder or hub id
    gpu_ids: str = "0"  # comma-separated CUDA device ids; worker i uses gpu_ids[i % len(gpu_ids)]
    num_processes: int = 1  # worker processes; the questions are split between them by video
    num_frames: int = 32  # frames sampled uniformly over the whole video
    fps: float = 1.0  # > 0 caps the frame count at whole seconds × fps (Spatial-R1's rule); 0 disables
    target_resolution: list[int] = field(default_factory=lambda: [448, 448])  # frames fit inside (H, W)
    batch_size: int = 8  # questions of one video answered together (left padding)
    shared_prefix: bool = True  # encode each video and prefill its prompt prefix once for all its questions
    max_new_tokens: int = 512
    prompt_type: Literal["default", "official", "thinking", "gemini_api", "gpt4v", "custom"] = "default"
    prompt_template_file: str | None = None  # for prompt_type custom: JSON/YAML with pre_prompt, mca_post_prompt,
    # na_post_prompt
    position_fps: str = "2.0"  # Qwen2.5-VL time code: a number (fps told to the model) or "sampled"
    mrope_positions: Literal["published", "transformers"] = "published"  # rotary positions: the Qwen rule or the
    # installed transformers' own (which differs between releases)
    use_cognitive_map: bool = False  # put a map of the scene's objects before each question
    offload_cogmap: bool = False  # read maps from cogmap_file_path instead of generating them
    cogmap_file_path: str | None = None  # json, jsonl, csv or parquet
    cogmap_id_key: str = "id"  # the file's key column: question id or scene name (matched as text)
    cogmap_cog_key: str = "cognitive_map"  # the file's map column
    cogmap_fallback: Literal["generate", "none"] = "generate"  # for a question without an offloaded map
    cogmap_max_new_tokens: int = 512  # length limit of a generated map
    debug_mode: bool = False  # evaluate a seeded subset of debug_size questions
    debug_size: int = 64
    seed: int = 42
    trust_remote_code: bool = False  # let transformers run code shipped with the checkpoint
    resume: str | None = None  # a run directory to continue with its saved config
    run_dir: str | None = None  # this run's directory instead of a new timestamped one (torchrun: one for all ranks)
    dist_timeout_minutes: float = 720  # torchrun: how long ranks wait for each other before giving up
    demo: bool = False  # build (once) and evaluate a tiny random model on a synthetic VSI-Bench-shaped set
    demo_dir: str = "demo_data"  # where the demo's model and data live
    demo_family: Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] = "qwen2_5_vl"


# What --resume may change: where and how wide the work runs, never what is computed.
RESUME_OVERRIDABLE = {"gpu_ids", "num_processes", "dist_timeout_minutes"}

# What --demo sets, unless the same flag is given on the command line.
DEMO_SETTINGS = {"num_processes": 1, "batch_size": 4, "max_new_tokens": 16, "output_dir_base": "demo_runs"}


# ---------------------------------------------------------------- configuration


def parse_config(defaults: EvalConfig, argv: list[str]) -> tuple[EvalConfig, set[str]]:
    """Command-line overrides on top of `defaults`; also returns the names of the fields given."""
    parser = HfArgumentParser(EvalConfig)
    parser.set_defaults(**asdict(defaults))
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    names = {f.name for f in fields(EvalConfig)}
    given = {arg[2:].split("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    given |= {name[3:] for name in given if name.startswith("no_")}
    return config, given & names


def apply_demo(config: EvalConfig, given: set[str]) -> EvalConfig:
    """Point the config at the demo assets, building them on first use."""
    from demo_assets import ensure_demo

    paths = ensure_demo(config.demo_dir, family=config.demo_family)
    config.model_name, config.parquet_file, config.data_file = str(paths["model"]), str(paths["parquet"]), None
    config.video_dir = str(paths["video_dir"])
    for name, value in DEMO_SETTINGS.items():
        if name not in given:
            setattr(config, name, value)
    return config


def check_config(config: EvalConfig) -> None:
    """Reject settings that cannot work, before anything is loaded."""
    if (config.prompt_type == "custom") != bool(config.prompt_template_file):
        raise DataError("prompt_type custom and prompt_template_file go together: set both or neither")
    if config.prompt_template_file:
        load_prompt_template(config.prompt_template_file)
    if config.use_cognitive_map and config.offload_cogmap and not config.cogmap_file_path:
        raise DataError("cogmap_file_path: needed when offload_cogmap is set")
    if len(config.target_resolution) != 2 or min(config.target_resolution) <= 0:
        raise DataError(f"target_resolution: expected two positive sizes (H W), got {config.target_resolution}")
    if config.position_fps != "sampled" and not is_positive_number(config.position_fps):
        raise DataError(f"position_fps: expected a positive number or 'sampled', got {config.position_fps!r}")
    for name in ("num_frames", "batch_size", "max_new_tokens", "debug_size", "cogmap_max_new_tokens"):
        if getattr(config, name) < 1:
            raise DataError(f"{name}: must be at least 1, got {getattr(config, name)}")
    if not os.path.isdir(config.video_dir):
        raise DataError(f"video_dir: {config.video_dir}: no such directory")
    check_model(config.model_name)


def is_positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def check_model(model_name: str) -> None:
    """The model must be a Qwen-VL checkpoint: a local folder with its config.json, or a hub id."""
    looks_local = model_name.startswith(("/", ".", "~")) or model_name.count("/") != 1
    if os.path.isdir(model_name):
        config_file = os.path.join(model_name, "config.json")
        if not os.path.isfile(config_file):
            raise DataError(f"model_name: {model_name}: no config.json, not a model checkpoint")
        with open(config_file) as handle:
            model_type = json.load(handle).get("model_type")
        if model_type not in QWEN_VL_MODEL_TYPES:
            raise DataError(
                f"model_name: {config_file}: model_type {model_type!r} is not a Qwen-VL model "
                f"({', '.join(QWEN_VL_MODEL_TYPES)})"
            )
    elif looks_local:
        raise DataError(f"model_name: {model_name}: no such directory")


# ---------------------------------------------------------------- run directory, logging, versions


def make_run_dir(config: EvalConfig) -> Path:
    """A new {output_dir_base}/{model basename}/{YYYYmmdd_HHMMSS}/ folder; never an existing one."""
    parent = Path(config.output_dir_base) / os.path.basename(config.model_name.rstrip("/"))
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    for suffix in ["", *(f"_{i}" for i in range(1, 100))]:
        run_dir = parent / f"{stamp}{suffix}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a new run directory under {parent}")


def setup_logging(log_path: Path, console_level: int = logging.INFO) -> logging.Logger:
    """Log to the run's log file (every process appends to it) and to the console."""
    logger = logging.getLogger("eval_qwen")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    formatter = logging.Formatter("%(asctime)s [%(processName)s] %(levelname)s %(message)s")
    file_handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    console = logging.StreamHandler()
    console.setLevel(console_level)
    for handler in (file_handler, console):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def versions() -> dict:
    import decord
    import numpy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "decord": decord.__version__,
        "numpy": numpy.__version__,
    }


def score_settings(config: EvalConfig, workers: list[dict]) -> dict:
    """What changes scores besides the model: recorded in every summary."""
    return {
        "num_frames": config.num_frames,
        "fps": config.fps,
        "target_resolution": config.target_resolution,
        "position_fps": config.position_fps,
        "mrope_positions": config.mrope_positions,
        "prompt_type": config.prompt_type,
        "max_new_tokens": config.max_new_tokens,
        "parser": "official",
        "dtype": sorted({w["dtype"] for w in workers}),
        "attention": sorted({w["attention"] for w in workers}),
        "devices": sorted({w["device"] for w in workers}),
    }


def worker_devices(config: EvalConfig) -> list[str]:
    """Device of each worker: "cuda:<id>" from gpu_ids, round robin, or "cpu" when CUDA is absent."""
    if not torch.cuda.is_available():
        return ["cpu"] * config.num_processes
    gpu_ids = [g.strip() for g in str(config.gpu_ids).split(",") if g.strip()]
    if not gpu_ids:
        raise DataError("gpu_ids: empty; give at least one CUDA device id")
    return [f"cuda:{gpu_ids[rank % len(gpu_ids)]}" for rank in range(config.num_processes)]


# ---------------------------------------------------------------- records


VIDEO_FAILED = "video failed"  # the start of a record's error when its video could not be read


def is_video_error(error: str | None) -> bool:
    return bool(error) and error.startswith(VIDEO_FAILED)


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
    record["score"] = vsibench_acc.score_record(record)  # the official rules
    record["score_lenient"] = vsibench_acc.score_record(record, parser="lenient")
    return record


# ---------------------------------------------------------------- one worker process


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


def evaluate_shard(
    rank: int,
    device: str,
    config: EvalConfig,
    questions: list[dict],
    done_ids: set[int],
    run_dir: str,
    compare_first: bool = False,  # log how transformers' positions compare with the published ones
) -> None:
    """Answer one shard's questions video by video, appending records to the shard file after every batch.

    Batches are the same fixed chunks of each video's questions in every run, so a resumed run skips the
    batches already written and recomputes a torn one whole: results equal those of an uninterrupted run.
    """
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


def evaluate_questions(rank, device, config, questions, done_ids, run_dir: Path, log, compare_first: bool) -> None:
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
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    template = load_prompt_template(config.prompt_template_file) if config.prompt_template_file else None
    timer = StageTimer(model)
    video_seconds = 0.0
    groups = {path: qs for path, qs in group_by_video(questions).items() if any(q["id"] not in done_ids for q in qs)}

    shard_path = run_dir / "shards" / f"shard_{rank}.jsonl"
    first_prompt_checked = not compare_first
    with (
        open(shard_path, "a", encoding="utf-8") as shard,
        tqdm(total=len(todo), desc=f"worker {rank} ({device})", unit="q", position=rank, dynamic_ncols=True) as bar,
    ):
        for video_path, video, video_error, decode_seconds in decoded_videos(list(groups), config, factor):
            video_seconds += decode_seconds
            video_questions = groups[video_path]
            if video_error:
                log.error(f"worker {rank}: {video_error}; its {len(video_questions)} questions score 0")
            prompts = {q["id"]: build_prompt(q, config.prompt_type, template) for q in video_questions}
            texts = {qid: chat_text(processor, prompt) for qid, prompt in prompts.items()}
            # The video's prefix is shared by the questions' texts and, when one is generated, the map's.
            map_text = chat_text(processor, COGMAP_PROMPT) if needs_generated_map(config, video_questions) else None
            answer_texts, video_error = video_answerer(
                model, processor, video, video_error, [*texts.values(), *([map_text] if map_text else [])], config
            )
            if video_error and video is not None:
                log.error(f"worker {rank}: {video_path}: {video_error}")
            generate_map = None
            if map_text and not video_error:
                generate_map = partial(answer_texts, [map_text], max_new_tokens=config.cogmap_max_new_tokens)
            cogmaps = cognitive_maps(config, video_questions, generate_map)
            if config.use_cognitive_map:  # each question's map goes between the pre-prompt and the question
                prompts = {
                    q["id"]: build_prompt(q, config.prompt_type, template, cogmaps[q["id"]][0]) for q in video_questions
                }
                texts = {qid: chat_text(processor, prompt) for qid, prompt in prompts.items()}
            if not video_error and not first_prompt_checked:
                inputs = processor_inputs(processor, video, [texts[video_questions[0]["id"]]], config.position_fps)
                comparison = compare_positions(model, inputs.to(model.device))
                log.info(f"positions on the run's first prompt (id {video_questions[0]['id']}): {comparison}")
                first_prompt_checked = True

            for start in range(0, len(video_questions), config.batch_size):
                batch = video_questions[start : start + config.batch_size]
                if all(q["id"] in done_ids for q in batch):
                    continue
                if video_error:
                    answers = [("", video_error)] * len(batch)
                else:
                    try:
                        answers = answer_batch(answer_texts, [texts[q["id"]] for q in batch])
                    except Exception as failure:  # recorded on each question, logged with its traceback
                        error = f"generation failed: {type(failure).__name__}: {failure}"
                        log.exception(f"worker {rank}: ids {[q['id'] for q in batch]}: {error}")
                        answers = [("", error)] * len(batch)
                for question, (prediction, error) in zip(batch, answers, strict=True):
                    if question["id"] not in done_ids:
                        qid = question["id"]
                        record = result_record(question, prompts[qid], prediction, video, error, cogmaps[qid])
                        shard.write(json.dumps(record, ensure_ascii=False) + "\n")
                shard.flush()
                bar.update(sum(q["id"] not in done_ids for q in batch))

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


# ---------------------------------------------------------------- orchestration


def run_workers(
    config: EvalConfig, shards: list[list[dict]], done_ids: set[int], run_dir: Path, log: logging.Logger
) -> dict[int, str]:
    """One spawned process per shard with work left; returns {rank: why it failed} for failed workers.

    A failed worker does not stop the others: they finish their shards. Ctrl-C stops all of them.
    """
    devices = worker_devices(config)
    context = mp.get_context("spawn")  # CUDA cannot be forked; each worker starts clean
    workers = {}
    first_id = min((q["id"] for shard in shards for q in shard if q["id"] not in done_ids), default=None)
    for rank, shard in enumerate(shards):
        todo = sum(q["id"] not in done_ids for q in shard)
        if not todo:
            continue
        log.info(f"worker {rank}: {todo} questions on {devices[rank]}")
        shard_done = {q["id"] for q in shard} & done_ids
        process = context.Process(
            target=evaluate_shard,
            args=(
                rank,
                devices[rank],
                config,
                shard,
                shard_done,
                str(run_dir),
                any(q["id"] == first_id for q in shard),
            ),
            name=f"worker-{rank}",
        )
        process.start()
        workers[rank] = process
    try:
        for process in workers.values():
            process.join()
    except KeyboardInterrupt:
        log.error("interrupted: stopping the workers")
        for process in workers.values():
            process.terminate()
            process.join()
        return {rank: "interrupted" for rank in workers}
    return {rank: exit_reason(p.exitcode) for rank, p in workers.items() if p.exitcode != 0}


def exit_reason(exitcode: int) -> str:
    if exitcode < 0:
        return f"killed by signal {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def read_shard(path: Path, log: logging.Logger) -> list[dict]:
    """Records of one shard file. A torn last line (a process killed mid-write) is cut off the file, so
    that appending goes on from a clean line; a bad line elsewhere is an error naming file and line."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: the bytes after the last newline
    records = []
    for number, line in enumerate(complete, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(complete):
                raise DataError(f"{path}: line {number}: not valid JSON") from None
            tail = line + b"\n" + tail  # the last newline-terminated line can be torn too
    if tail:
        log.warning(f"{path}: discarding a torn last line ({len(tail)} bytes) left by an interrupted worker")
        with open(path, "r+b") as handle:
            handle.truncate(len(data) - len(tail))
    return records


def shard_records(run_dir: Path, log: logging.Logger) -> dict[int, dict]:
    """Every finished record of a run, by id."""
    by_id = {}
    for path in sorted((run_dir / "shards").glob("shard_*.jsonl")):
        for record in read_shard(path, log):
            by_id[record["id"]] = record
    return by_id


def select_questions(config: EvalConfig) -> tuple[list[dict], str]:
    """The questions this run evaluates, and a sentence saying which subset they are."""
    data_file = config.data_file or config.parquet_file
    questions = load_questions(data_file, config.video_dir)
    steps = [f"{data_file}: {len(questions)} questions"]
    if config.subset != "full" or config.subset_ids_file:
        questions = select_subset(questions, config.subset, config.subset_ids_file, data_file)
        source = config.subset_ids_file or "the pruned column"
        steps.append(f"subset {config.subset} ({source}): {len(questions)}")
    if config.question_types:
        questions = select_question_types(questions, config.question_types)
        steps.append(f"question types {', '.join(config.question_types)}: {len(questions)}")
    if config.debug_mode:
        questions = debug_subset(questions, config.debug_size, config.seed)
        steps.append(f"debug subset (seed {config.seed}): {len(questions)}")
    if not questions:
        raise DataError(f"{data_file}: no questions left to evaluate ({'; '.join(steps)})")
    if config.use_cognitive_map and config.offload_cogmap:
        maps = load_offloaded_maps(config.cogmap_file_path, config.cogmap_id_key, config.cogmap_cog_key)
        for question in questions:
            question["offloaded_cogmap"] = offloaded_map(maps, question)
    return questions, "; ".join(steps)


def resume_config(run_dir: Path, given: set[str], overrides: EvalConfig) -> EvalConfig:
    """The config saved in a run directory; only settings that cannot change results may be overridden."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise DataError(f"resume: {config_file}: not found; is {run_dir} a run directory?")
    saved = json.loads(config_file.read_text())
    unknown = set(saved) - {f.name for f in fields(EvalConfig)}
    if unknown:
        raise DataError(f"resume: {config_file}: unknown field(s) {', '.join(sorted(unknown))}")
    changed = given - RESUME_OVERRIDABLE - {"resume"}
    if changed:
        raise DataError(f"resume: {', '.join(sorted(changed))} cannot change when resuming {run_dir}")
    config = EvalConfig(**saved)
    for name in given & RESUME_OVERRIDABLE:
        setattr(config, name, getattr(overrides, name))
    config.resume = str(run_dir)
    return config


def prepare(config: EvalConfig, given: set[str]) -> tuple[EvalConfig, list[dict], str]:
    """The run's final config (a resumed run's saved one, or the demo's), checked, and its questions."""
    if config.resume:
        config = resume_config(Path(config.resume), given, config)
    elif config.demo:
        config = apply_demo(config, given)
    check_config(config)
    questions, selection = select_questions(config)
    return config, questions, selection


def open_run_dir(config: EvalConfig) -> Path:
    """The run directory: the resumed one, `run_dir` when given (never one that holds a run), or a new
    timestamped one. A new one gets shards/ and config.json."""
    if config.resume:
        return Path(config.resume)
    if config.run_dir:
        run_dir = Path(config.run_dir)
        if (run_dir / "config.json").exists():
            raise DataError(f"run_dir: {run_dir} already holds a run; continue it with --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = make_run_dir(config)
    (run_dir / "shards").mkdir(exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return run_dir


def start_log(config: EvalConfig, run_dir: Path, questions: list[dict], selection: str, console=logging.INFO):
    """The run's logger, with the config, versions and question selection written first."""
    log = setup_logging(run_dir / f"vsibench_eval_{config.prompt_type}.log", console_level=console)
    log.info(f"{'resuming' if config.resume else 'run directory'}: {run_dir}")
    log.info("config: " + json.dumps(asdict(config)))
    log.info("versions: " + json.dumps(versions()))
    log.info(f"{len(questions)} questions over {len(group_by_video(questions))} videos; {selection}")
    if config.use_cognitive_map and config.offload_cogmap:
        found = sum(q["offloaded_cogmap"] is not None for q in questions)
        log.info(
            f"cognitive maps: {found} of {len(questions)} questions have one in {config.cogmap_file_path}; "
            f"the others: {'generated by the model' if config.cogmap_fallback == 'generate' else 'no map'}"
        )
    return log


def answered_ids(run_dir: Path, questions: list[dict], log: logging.Logger) -> set[int]:
    """Ids of the questions that already have a record (after cutting torn last lines off the shards)."""
    done = set(shard_records(run_dir, log)) & {q["id"] for q in questions}
    if done:
        log.info(f"{len(done)} questions already answered; they are skipped")
    return done


def main(defaults: EvalConfig, argv: list[str] | None = None) -> int:
    config, given = parse_config(defaults, sys.argv[1:] if argv is None else argv)
    if torchrun_ranks():
        return main_torchrun(config, given)
    try:
        config, questions, selection = prepare(config, given)
        run_dir = open_run_dir(config)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log = start_log(config, run_dir, questions, selection)
    try:
        done_ids = answered_ids(run_dir, questions, log)
    except DataError as error:
        log.error(str(error))
        return 2
    started = time.perf_counter()
    failures = run_workers(config, shard_by_video(questions, config.num_processes), done_ids, run_dir, log)
    resume = f"python eval_qwen.py --resume {run_dir}"
    return finish_run(config, run_dir, questions, done_ids, failures, time.perf_counter() - started, log, resume)


# ---------------------------------------------------------------- under torchrun / accelerate launch


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun or accelerate, else None."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(name in os.environ for name in names):
        return None
    return tuple(int(os.environ[name]) for name in names)


def main_torchrun(config: EvalConfig, given: set[str]) -> int:
    """One rank of a torchrun job: rank 0 prepares the run directory, every rank answers its shard
    in-process on the GPU of its LOCAL_RANK, and rank 0 merges and scores once every rank has finished.

    All ranks must see the run directory (a shared filesystem)."""
    import torch.distributed as dist

    rank, world_size, local_rank = torchrun_ranks()
    mp.current_process().name = f"rank-{rank}"  # how log lines name their process
    timeout = timedelta(minutes=config.dist_timeout_minutes)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    gloo = dist.new_group(backend="gloo", timeout=timeout)  # monitored_barrier names missing ranks; gloo only
    try:
        decided = [0, None, None]  # exit status, config, run dir: rank 0 decides, the others follow
        if rank == 0:
            try:
                config, questions, selection = prepare(config, given)
                decided = [0, config, str(open_run_dir(config))]
            except DataError as error:
                print(f"error: {error}", file=sys.stderr)
                decided = [2, None, None]
        dist.broadcast_object_list(decided, src=0)
        status, config, run_dir = decided
        if status:
            return status
        run_dir = Path(run_dir)
        if rank != 0:
            questions, selection = select_questions(config)
        log = start_log(config, run_dir, questions, selection, logging.INFO if rank == 0 else logging.WARNING)
        if rank == 0:
            done_ids = answered_ids(run_dir, questions, log)  # also cuts torn lines before anyone appends
            log.info(f"torchrun: {world_size} ranks; if the job stops, relaunch it with --resume {run_dir}")
        dist.barrier(group=gloo)
        if rank != 0:
            done_ids = set(shard_records(run_dir, log)) & {q["id"] for q in questions}
        shard = shard_by_video(questions, world_size)[rank]
        first_id = min((q["id"] for q in questions if q["id"] not in done_ids), default=None)
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if device != "cpu":
            torch.cuda.set_device(local_rank)
        started = time.perf_counter()
        if any(q["id"] not in done_ids for q in shard):
            compare_first = any(q["id"] == first_id for q in shard)
            evaluate_questions(rank, device, config, shard, done_ids, run_dir, log, compare_first)
        failures = {}
        try:
            dist.monitored_barrier(group=gloo, timeout=timeout, wait_all_ranks=True)
        except RuntimeError as error:  # only rank 0 waits for the others here
            log.error(f"not every rank finished within {config.dist_timeout_minutes} minutes: {error}")
            failures = {"?": "did not reach the final barrier"}
        if rank != 0:
            return 0
        resume = f"the same torchrun command with --resume {run_dir}"
        elapsed = time.perf_counter() - started
        return finish_run(config, run_dir, questions, done_ids, failures, elapsed, log, resume)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the end of a run


def finish_run(config, run_dir: Path, questions, done_ids, failures: dict, elapsed: float, log, resume: str) -> int:
    """Merge the shards into the results file sorted by id, score it, write the summary and the table;
    the exit status says whether every question has a result."""
    results_path = run_dir / f"vsibench_results_{config.prompt_type}.jsonl"
    by_id = shard_records(run_dir, log)
    records = [by_id[q["id"]] for q in questions if q["id"] in by_id]  # questions are sorted by id
    write_jsonl(str(results_path), records)
    stats = vsibench_acc.summarize(records)  # aggregate()'s scores, the micro mean, datasets and 95 % intervals
    lenient = vsibench_acc.aggregate(records, parser="lenient")
    workers = [json.loads(p.read_text()) for p in sorted((run_dir / "shards").glob("worker_*.json"))]
    failed_videos = sorted({r["dataset"] + "/" + r["scene_name"] for r in records if is_video_error(r["error"])})
    answered = len(records) - len(done_ids)
    summary = {
        **stats,
        "lenient": {"overall": lenient["overall"], "tasks": lenient["tasks"], "parser": "lenient"},
        "complete": len(records) == len(questions),
        "missing": len(questions) - len(records),
        "run_dir": str(run_dir),
        "results_file": str(results_path),
        "model_name": config.model_name,
        "prompt_type": config.prompt_type,
        "failed_videos": failed_videos,
        "failed_workers": {str(rank): why for rank, why in failures.items()},
        "seconds": round(elapsed, 2),
        "questions_per_second": round(answered / elapsed, 3) if elapsed > 0 else None,
        "versions": versions(),
        "settings": score_settings(config, workers),
        "workers": workers,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(f"{answered} questions answered in {elapsed:.1f}s ({summary['questions_per_second']} questions/s)")
    stages = ("video_decoding", "vision_encoder", "prefill", "generation")
    stage_seconds = {name: sum(w["seconds"].get(name, 0.0) for w in workers) for name in stages}
    log.info("time in workers: " + ", ".join(f"{name} {value:.1f}s" for name, value in stage_seconds.items()))
    if failed_videos:
        log.warning(f"{len(failed_videos)} video(s) failed: {', '.join(failed_videos)}")
    log.info("accuracy (%):\n" + vsibench_acc.format_table(stats))
    log.info(f"overall with the lenient parser (rescore: vsibench_acc.py --parser lenient): {lenient['overall']:.2f}")
    log.info(f"results: {results_path}")
    log.info(f"log: {run_dir / f'vsibench_eval_{config.prompt_type}.log'}")
    if summary["missing"]:
        for rank, why in sorted(failures.items()):
            log.error(f"worker {rank} {why}; its shard is incomplete")
        log.error(
            f"INCOMPLETE: {summary['missing']} of {len(questions)} questions have no result; the table above "
            f"covers only the answered ones. Finished answers are kept. Resume with:\n  {resume}"
        )
        return 130 if "interrupted" in failures.values() else 1
    return 0


if __name__ == "__main__":
    # Edit these values for your run; any of them can be overridden on the command line as --field_name value.
    config = EvalConfig(
        parquet_file="data/vsibench/test.parquet",
        video_dir="data/vsibench",
        output_dir_base="results",
        model_name="Qwen/Qwen2.5-VL-7B-Instruct",
        gpu_ids="0,1,2,3",
        num_processes=4,
        num_frames=32,
        fps=1.0,
        target_resolution=[448, 448],
        batch_size=8,
        max_new_tokens=512,
        prompt_type="default",
        use_cognitive_map=False,
        offload_cogmap=False,
        cogmap_file_path=None,
        cogmap_id_key="id",
        cogmap_cog_key="cognitive_map",
        debug_mode=False,
        debug_size=64,
        seed=42,
    )
    sys.exit(main(config))
