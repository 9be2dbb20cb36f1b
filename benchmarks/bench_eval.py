"""Benchmark: the usual per-question pipeline, two intermediate ones and the evaluator's, in one process, on CPU.

    python benchmarks/bench_eval.py [--videos 4] [--questions_per_video 18] [--threads 1] [--repeats 3]
                                    [--long_videos 2] [--long_new_tokens 128] [--family qwen2_5_vl]

Builds a VSI-Bench-shaped synthetic workload (videos x questions, 32 frames each at 448x336) and a random-weight
model of the family (Qwen2.5-VL by default) whose text part is big enough that prefill dominates on a CPU, then
answers every question with each pipeline and keeps the best of `--repeats` runs:
- naive: as the original Spatial-R1 script and lmms-eval do: per question, decode the video, run the vision
  encoder and prefill the whole prompt, generate with transformers (batch 1);
- decode_once: the middle baseline: each video decoded once (the next in the background), but every question
  still through the encoder and a full prefill (batch 1);
- shared_hf: the evaluator before the fast decoder: decode once, the shared video prefix, transformers'
  generate, fixed batches of --batch_size (8 + 8 + 2 for 18 questions);
- fast: the evaluator now: decode and the prefix's patches prepared in the background, the shared prefix,
  the fast decoder's arena (the questions of several videos decoded together, batch_size rows).
A long-answer scenario (--long_new_tokens, no end token: every answer runs to the limit, as reasoning answers
do) compares shared_hf and fast. Prints one JSON line: per scenario each pipeline's seconds, the ratios, the
prefill tokens and whether every pipeline gave the same answers.
"""

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsibench_eval.demo import data as demo_data
from vsibench_eval.demo import tiny_models
from vsibench_eval.inputs.frames import load_video  # noqa: E402
from vsibench_eval.inputs.prompts import build_prompt  # noqa: E402
from vsibench_eval.inputs.questions import group_by_video  # noqa: E402
from vsibench_eval.model.generation import (  # noqa: E402
    StageTimer,
    chat_text,
    decoding_config,
    generate_plain,
    load_model,
)
from vsibench_eval.running import answering, continuous, video_prep
from vsibench_eval.settings.config import EvalConfig  # noqa: E402
from vsibench_eval.settings.protocols import apply_protocol  # noqa: E402

FRAME_WIDTH, FRAME_HEIGHT, SOURCE_FPS, SECONDS = 448, 336, 10, 8


def build_workload(out_dir: Path, videos: int, questions_per_video: int, seed: int = 0) -> list[dict]:
    """Synthetic videos and VSI-Bench questions (all ten types, cycled) as question records."""
    rng = np.random.default_rng(seed)
    paths = []
    for v in range(videos):
        path = out_dir / "scannet" / f"scene{v:04d}_00.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = demo_data.render_frames(FRAME_WIDTH, FRAME_HEIGHT, SECONDS * SOURCE_FPS, rng)
        demo_data.write_video(path, frames, SOURCE_FPS)
        paths.append(path)
    return question_records(paths, questions_per_video, rng)


def question_records(video_paths: list[Path], questions_per_video: int, rng) -> list[dict]:
    """`questions_per_video` VSI-Bench questions (all ten types, cycled) on each video {dataset}/{scene}.mp4."""
    questions = []
    for path in video_paths:
        rows = []
        while len(rows) < questions_per_video:
            rows += demo_data.scene_questions(rng)
        for question_type, question, ground_truth, options in rows[:questions_per_video]:
            questions.append(
                {
                    "id": len(questions),
                    "dataset": path.parent.name,
                    "scene_name": path.stem,
                    "question_type": question_type,
                    "question": question,
                    "ground_truth": ground_truth,
                    "options": options,
                    "video_path": str(path),
                }
            )
    return questions


def texts_of(processor, config, questions) -> list[str]:
    return [chat_text(processor, build_prompt(q, config.prompt_type)) for q in questions]


# Each pipeline yields the answers of every batch it finishes ({id: text}), so a caller can time it and stop it.


def run_naive(model, processor, config, questions, decoder, timer):
    """Per question: decode the video, encode it and prefill the whole prompt."""
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    rules = video_prep.frame_rules(config)
    for question in questions:
        video = load_video(
            question["video_path"], config.num_frames, config.fps, config.target_resolution, factor, rules
        )
        text = texts_of(processor, config, [question])
        answers = generate_plain(model, processor, video, text, config.position_fps, config.max_new_tokens, timer=timer)
        yield dict(zip([question["id"]], answers, strict=True))


def run_decode_once(model, processor, config, questions, decoder, timer):
    """Per video: decode once; per question: encode and prefill the whole prompt."""
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    groups = group_by_video(questions)
    for decoded in video_prep.decoded_videos(list(groups), config, factor):
        for question in groups[decoded.path]:
            texts = texts_of(processor, config, [question])
            answers = generate_plain(
                model, processor, decoded.video, texts, config.position_fps, config.max_new_tokens, timer=timer
            )
            yield dict(zip([question["id"]], answers, strict=True))


def run_shared_hf(model, processor, config, questions, decoder, timer):
    """The evaluator before the fast decoder: decode once, shared prefix, generate(), fixed batches."""
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    groups = group_by_video(questions)
    for decoded in video_prep.decoded_videos(list(groups), config, factor):
        texts = texts_of(processor, config, groups[decoded.path])
        answer, error = answering.video_answerer(model, processor, decoded.video, None, texts, config, timer=timer)
        assert error is None, error
        for start in range(0, len(texts), config.batch_size):
            batch = groups[decoded.path][start : start + config.batch_size]
            predictions = answering.answer_batch(answer, texts[start : start + len(batch)])
            yield {q["id"]: prediction for q, (prediction, _, _) in zip(batch, predictions, strict=True)}


def run_fast(model, processor, config, questions, arena, timer):
    """The evaluator's worker loop now: background preparation, shared prefixes, and the questions of several
    videos decoded together in the fast decoder's arena (`arena`, made by measure)."""
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    groups = group_by_video(questions)
    on_gpu = model.device.type == "cuda"
    prepare = partial(video_prep.prepare_prefix, config, None, processor, groups, threading.local(), on_gpu)
    threads = video_prep.video_threads(model.device.type, config)
    answerer = partial(answering.video_answerer, model, processor, config=config, timer=timer)
    log = logging.getLogger("eval_qwen")
    worker = answering.Worker(0, config, None, log, answerer, factor, processor, model, timer, arena)

    def videos():
        for decoded in video_prep.decoded_videos(list(groups), config, factor, prepare, threads):
            if decoded.prefix is not None:
                timer.add("processor", decoded.prefix.seconds)  # spent in a background thread
            yield decoded

    for records in continuous.answer_videos_together(worker, videos(), groups, set(), False):
        yield {record["id"]: record["prediction"] for record in records}


def fast_config(config: EvalConfig) -> EvalConfig:
    """The fast pipeline's settings: the evaluator's own batching (rows of the arena, cache slots)."""
    defaults = EvalConfig()
    return dataclasses.replace(config, batch_size=defaults.batch_size, batch_tokens=defaults.batch_tokens)


PIPELINES = {"naive": run_naive, "decode_once": run_decode_once, "shared_hf": run_shared_hf, "fast": run_fast}


def measure(pipeline: str, model, processor, config, questions, stop_at: float | None = None) -> dict:
    """One timed run of a pipeline: its answers, seconds up to its last finished batch (it stops after the batch
    that passes `stop_at`, a time.perf_counter() value), video decodes, its StageTimer, and the fast pipeline's
    arena (whose graph_failure says whether CUDA graphs were used)."""
    timer = StageTimer(model)
    decoder = None
    if pipeline == "fast":
        config = fast_config(config)
        decoder = continuous.make_arena(model, processor, config, decoding_config(model, processor), timer, questions)
    answers, started = {}, time.perf_counter()
    finished = started
    batches = PIPELINES[pipeline](model, processor, config, questions, decoder, timer)
    for batch_answers in batches:
        answers |= batch_answers
        finished = time.perf_counter()
        if stop_at is not None and finished >= stop_at:
            break
    batches.close()
    timer.remove()
    videos = len({q["video_path"] for q in questions if q["id"] in answers})
    decodes = len(answers) if pipeline == "naive" else videos
    run = {"answers": answers, "seconds": finished - started, "videos": videos, "decodes": decodes, "timer": timer}
    return run | {"decoder": decoder}


def best_of(repeats: int, pipeline: str, model, processor, config, questions) -> dict:
    """The fastest of `repeats` runs of a pipeline (the machine's load only ever slows a run down)."""
    runs = [measure(pipeline, model, processor, config, questions) for _ in range(repeats)]
    return min(runs, key=lambda run: run["seconds"])


def scenario(repeats, pipelines, model, processor, config, questions) -> dict:
    runs = {name: best_of(repeats, name, model, processor, config, questions) for name in pipelines}
    baseline = runs[pipelines[0]]
    return {
        "questions": len(questions),
        "new_tokens": config.max_new_tokens,
        "seconds": {name: round(run["seconds"], 2) for name, run in runs.items()},
        "baseline": pipelines[0],
        "speedup": {name: round(baseline["seconds"] / run["seconds"], 2) for name, run in runs.items()},
        "fast_over_shared_hf": round(runs["shared_hf"]["seconds"] / runs["fast"]["seconds"], 2),
        "identical": all(run["answers"] == baseline["answers"] for run in runs.values()),
        "prefill_tokens": {name: run["timer"].prefill_tokens for name, run in runs.items()},
        "video_decodes": {name: run["decodes"] for name, run in runs.items()},
        "stage_seconds": {name: rounded(run["timer"].seconds) for name, run in runs.items()},
    }


def rounded(seconds: dict) -> dict:
    return {name: round(value, 2) for name, value in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--questions_per_video", type=int, default=18)
    parser.add_argument("--width", type=int, default=256, help="text model width")
    parser.add_argument("--layers", type=int, default=4, help="text model layers")
    parser.add_argument("--batch_size", type=int, default=8, help="fixed batch of the shared_hf pipeline")
    parser.add_argument("--max_new_tokens", type=int, default=4)
    parser.add_argument("--long_videos", type=int, default=2, help="videos of the long-answer scenario (0: skip)")
    parser.add_argument("--long_new_tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps ratios stable under load)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline; the fastest counts")
    parser.add_argument("--family", default="qwen2_5_vl", choices=tiny_models.FAMILIES, help="model family")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tiny_models.build_tiny_checkpoint(tmp / "model", args.family, width=args.width, layers=args.layers)
        questions = build_workload(tmp / "videos", args.videos, args.questions_per_video)
        config = EvalConfig(
            num_frames=32,
            fps=0,  # 32 frames from every video, as on VSI-Bench's long videos
            target_resolution=[FRAME_HEIGHT, FRAME_WIDTH],
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            prompt_type="default",
        )
        apply_protocol(config, args.family)  # protocol none: the evaluator's defaults for the rest
        model, processor, info = load_model(str(model_dir), "cpu")
        result = {"short": scenario(args.repeats, list(PIPELINES), model, processor, config, questions)}
        if args.long_videos:
            config.max_new_tokens = args.long_new_tokens
            model.generation_config.eos_token_id = None  # random weights: every answer runs to the limit
            long_questions = questions[: args.long_videos * args.questions_per_video]
            result["long"] = scenario(args.repeats, ["shared_hf", "fast"], model, processor, config, long_questions)

    result |= {
        "videos": args.videos,
        "model": f"random {args.family}, text width {args.width}, {args.layers} layers",
        "dtype": info["dtype"],
        "attention": info["attention"],
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "fast_batch": {"batch_size": EvalConfig().batch_size, "batch_tokens": EvalConfig().batch_tokens},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
