"""Benchmark: the usual per-question pipeline against the evaluator's per-video pipeline, in one process.

    python benchmarks/bench_eval.py [--videos 4] [--questions_per_video 18] [--width 256] [--layers 4]
                                    [--family qwen2_5_vl]

Builds a VSI-Bench-shaped synthetic workload (videos x questions, 32 frames each at 448x336) and a
random-weight model of the family (Qwen2.5-VL by default) whose text part is big enough that prefill dominates
on a CPU, then answers
every question twice:
- naive: as the original Spatial-R1 script and lmms-eval do: per question, decode the video, run the
  vision encoder and prefill the whole prompt;
- shared: as eval_qwen.py's workers do: per video, decode once (the next video in the background), run the
  vision encoder and prefill the shared prefix once, then prefill only each question's own tokens.
Prints one JSON line with the counts, the times and whether every answer matched.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import demo_data  # noqa: E402
import tiny_models  # noqa: E402
import worker  # noqa: E402
from config import EvalConfig  # noqa: E402
from generation import StageTimer, chat_text, generate_plain, load_model  # noqa: E402
from prompts import build_prompt  # noqa: E402
from qwen_vl_utils import load_video  # noqa: E402
from util import group_by_video  # noqa: E402

FRAME_WIDTH, FRAME_HEIGHT, SOURCE_FPS, SECONDS = 448, 336, 10, 8


def build_workload(out_dir: Path, videos: int, questions_per_video: int, seed: int = 0) -> list[dict]:
    """Synthetic videos and VSI-Bench questions (all ten types, cycled) as question records."""
    rng = np.random.default_rng(seed)
    questions = []
    for v in range(videos):
        path = out_dir / "scannet" / f"scene{v:04d}_00.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = demo_data.render_frames(FRAME_WIDTH, FRAME_HEIGHT, SECONDS * SOURCE_FPS, rng)
        demo_data.write_video(path, frames, SOURCE_FPS)
        rows = []
        while len(rows) < questions_per_video:
            rows += demo_data.scene_questions(rng)
        for question_type, question, ground_truth, options in rows[:questions_per_video]:
            questions.append(
                {
                    "id": len(questions),
                    "dataset": "scannet",
                    "scene_name": path.stem,
                    "question_type": question_type,
                    "question": question,
                    "ground_truth": ground_truth,
                    "options": options,
                    "video_path": str(path),
                }
            )
    return questions


def run_naive(model, processor, config, questions) -> tuple[dict, int]:
    """Per question: decode the video, encode it and prefill the whole prompt."""
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    answers, decodes = {}, 0
    for question in questions:
        video = load_video(question["video_path"], config.num_frames, config.fps, config.target_resolution, factor)
        decodes += 1
        text = chat_text(processor, build_prompt(question, config.prompt_type))
        (answers[question["id"]],) = generate_plain(
            model, processor, video, [text], position_fps=config.position_fps, max_new_tokens=config.max_new_tokens
        )
    return answers, decodes


def run_shared(model, processor, config, questions) -> tuple[dict, int]:
    """The evaluator's worker loop: per video, decode once and share the video prefix."""
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    groups = group_by_video(questions)
    answers, decodes = {}, 0
    for path, video, video_error, _ in worker.decoded_videos(list(groups), config, factor):
        assert video_error is None, video_error
        decodes += 1
        texts = [chat_text(processor, build_prompt(q, config.prompt_type)) for q in groups[path]]
        answer, error = worker.video_answerer(model, processor, video, None, texts, config)
        assert error is None, error
        for start in range(0, len(texts), config.batch_size):
            batch = groups[path][start : start + config.batch_size]
            batch_texts = texts[start : start + config.batch_size]
            for question, (prediction, _) in zip(batch, worker.answer_batch(answer, batch_texts), strict=True):
                answers[question["id"]] = prediction
    return answers, decodes


def timed(run, model, processor, config, questions) -> dict:
    timer = StageTimer(model)
    started = time.perf_counter()
    answers, decodes = run(model, processor, config, questions)
    seconds = time.perf_counter() - started
    timer.remove()
    return {"answers": answers, "seconds": seconds, "decodes": decodes, "timer": timer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--questions_per_video", type=int, default=18)
    parser.add_argument("--width", type=int, default=256, help="text model width")
    parser.add_argument("--layers", type=int, default=4, help="text model layers")
    parser.add_argument("--batch_size", type=int, default=1, help="questions per batch in the shared pipeline")
    parser.add_argument("--max_new_tokens", type=int, default=4)
    parser.add_argument("--family", default="qwen2_5_vl", choices=tiny_models.FAMILIES, help="model family")
    args = parser.parse_args()

    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tiny_models.build_tiny_checkpoint(tmp / "model", args.family, width=args.width, layers=args.layers)
        questions = build_workload(tmp / "videos", args.videos, args.questions_per_video)
        config = EvalConfig(
            num_frames=32,
            fps=0,  # 32 frames from every video, as on VSI-Bench's long videos
            target_resolution=(FRAME_HEIGHT, FRAME_WIDTH),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            prompt_type="default",
        )
        model, processor, info = load_model(str(model_dir), "cpu")
        naive = timed(run_naive, model, processor, config, questions)
        shared = timed(run_shared, model, processor, config, questions)

    result = {
        "questions": len(questions),
        "videos": args.videos,
        "naive_seconds": round(naive["seconds"], 2),
        "shared_seconds": round(shared["seconds"], 2),
        "naive_prefill_tokens": naive["timer"].prefill_tokens,
        "shared_prefill_tokens": shared["timer"].prefill_tokens,
        "naive_video_decodes": naive["decodes"],
        "shared_video_decodes": shared["decodes"],
        "identical": naive["answers"] == shared["answers"],
        "speedup": round(naive["seconds"] / shared["seconds"], 2),
        "prefill_token_ratio": round(naive["timer"].prefill_tokens / shared["timer"].prefill_tokens, 2),
        "naive_stage_seconds": {k: round(v, 2) for k, v in naive["timer"].seconds.items()},
        "shared_stage_seconds": {k: round(v, 2) for k, v in shared["timer"].seconds.items()},
        "model": f"random {args.family}, text width {args.width}, {args.layers} layers",
        "dtype": info["dtype"],
        "attention": info["attention"],
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
