"""Each video's work on the CPU, done in a pool of background threads while the model answers earlier videos:
its frames decoded and resized, its questions' prompts and chat texts, and the processor inputs (tokens and
pixel patches) of its shared prefix. Each pool thread runs torch on one core, so the threads side by side use
the cores the pool was given, and the time the model waited for a video's frames is measured.
"""

import copy
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch

from vsibench_eval.inputs.cogmap import COGMAP_PROMPTS
from vsibench_eval.inputs.frames import FrameRules, VideoError, VideoFrames, load_video
from vsibench_eval.inputs.prompts import build_prompt, cogmap_block
from vsibench_eval.model.generation import chat_text, prefix_inputs, shared_prefix_text
from vsibench_eval.run_dir.directory import VIDEO_FAILED
from vsibench_eval.settings.config import EvalConfig


class DecodedVideo(NamedTuple):
    path: str
    video: VideoFrames | None  # None when it failed
    error: str | None
    seconds: float  # decoding and resizing
    prefix: object = None  # the prepared processor inputs of its shared prefix (PreparedPrefix), if any
    waited: float = 0.0  # how long the model waited for it (the pool had not finished it yet)


@dataclass
class PreparedPrefix:
    text: str  # the shared prefix these inputs are for
    inputs: dict  # prefix_inputs(...), pinned on CUDA
    seconds: float  # the processor's time (in a background thread)


def frame_rules(config: EvalConfig) -> FrameRules:
    return FrameRules(
        count=config.frame_count,
        rounding=config.frame_index_rounding,
        resize=config.resize,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        total_pixels=config.total_pixels,
    )


def decoded_videos(video_paths: list[str], config: EvalConfig, factor: int, prepare=None, threads: int = 1):
    """Yield a DecodedVideo per video, in order, while a pool of `threads` background threads, each with one
    torch thread, decodes (and `prepare(path, frames)`, e.g. patchifies) the next `threads` videos."""

    rules = frame_rules(config)

    def decode(path: str) -> DecodedVideo:
        tick = time.perf_counter()
        try:
            frames = load_video(path, config.num_frames, config.fps, tuple(config.target_resolution), factor, rules)
        except Exception as error:  # whatever goes wrong with a video's frames takes down that video only
            reason = str(error) if isinstance(error, VideoError) else f"{path}: {type(error).__name__}: {error}"
            return DecodedVideo(path, None, f"{VIDEO_FAILED}: {reason}", time.perf_counter() - tick)
        seconds = time.perf_counter() - tick
        return DecodedVideo(path, frames, None, seconds, prepare(path, frames) if prepare else None)

    with ThreadPoolExecutor(max_workers=threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending = deque(pool.submit(decode, path) for path in video_paths[:threads])
        for next_path in [*video_paths[threads:], *[None] * len(pending)]:
            asked = time.perf_counter()
            current = pending.popleft().result()
            waited = time.perf_counter() - asked
            if next_path:
                pending.append(pool.submit(decode, next_path))
            yield current._replace(waited=waited)


def prepare_prefix(
    config: EvalConfig, template, processor, groups: dict, local: threading.local, pin: bool, path: str, video
):
    """In a background thread: the processor inputs of a video's shared prefix (tokens and pixel patches), with
    the thread's own copy of the processor (the tokenizer keeps per-call settings). None when not shared or when
    it fails (the main thread then computes them itself, and meets the error there)."""
    if not config.shared_prefix or config.video_input == "images":  # images: no video block to share
        return None
    if not hasattr(local, "processor"):
        local.processor = copy.deepcopy(processor)
    try:
        _, texts, map_text = video_texts(config, template, local.processor, groups[path])  # a video, not images
        text = shared_prefix_text([*texts.values(), *([map_text] if map_text else [])])
        if text is None:
            return None
        started = time.perf_counter()
        inputs = prefix_inputs(local.processor, video, text, config.position_fps, pin)
        return PreparedPrefix(text, inputs, time.perf_counter() - started)
    except Exception:
        return None


def video_texts(config: EvalConfig, template: dict | None, processor, questions: list[dict], images: int = 0):
    """The prompts and model texts (model_text) of a video's questions, and the model text of its map when one
    is generated. `images`: how many frames go as separate images (0: as one video)."""
    prompts = question_prompts(config, template, questions)
    texts = {qid: model_text(processor, prompt, config.system_prompt, images) for qid, prompt in prompts.items()}
    # The video's prefix is shared by the questions' texts and, when one is generated, the map's.
    map_text = None
    if needs_generated_map(config, questions):
        map_text = model_text(processor, COGMAP_PROMPTS[config.cogmap_prompt], config.system_prompt, images)
    return prompts, texts, map_text


def model_text(processor, prompt: str, system_prompt: str, images: int = 0) -> str:
    """What the model is given for a prompt: its chat text (generation.chat_text), or, for a served model (no
    processor here), the prompt itself: the server puts it in its chat template."""
    return prompt if processor is None else chat_text(processor, prompt, system_prompt, images)


def question_prompts(
    config: EvalConfig, template: dict | None, questions: list[dict], cogmaps: dict | None = None
) -> dict[int, str]:
    """Each question's prompt text by id (`template`: the user's, for prompt_type custom), with its cognitive map
    when `cogmaps` is given."""
    prompts = {}
    for q in questions:
        block = ""
        if cogmaps:
            cogmap, source = cogmaps[q["id"]]
            block = cogmap_block(cogmap, source, config.cogmap_insert, config.offload_cogmap)
        prompts[q["id"]] = build_prompt(q, config.prompt_type, template, block, config.prompt_format)
    return prompts


def needs_generated_map(config: EvalConfig, questions: list[dict]) -> bool:
    """Does this video need the model to write its cognitive map (some question has no offloaded one)?"""
    if not config.use_cognitive_map or (config.offload_cogmap and config.cogmap_fallback == "none"):
        return False
    return any(not q.get("offloaded_cogmap") for q in questions)


def video_threads(device: str, config: EvalConfig) -> int:
    """Background threads preparing videos: one on the CPU (the model needs the cores); on a GPU this worker's
    share of the cores less two (the thread driving the GPU, and the system), at least one: a 1920x1440 video
    takes seconds of one core to decode and resize, far longer than the GPU takes to answer it."""
    if not device.startswith("cuda"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, config.num_processes) - 2)
