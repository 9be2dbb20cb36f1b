"""GPU benchmark: the real Qwen2.5-VL-7B architecture on a VSI-Bench-shaped workload, naive against fast, one run.

    python benchmarks/bench_gpu.py [--out FILE] [--budget_s 300]   # one GPU (an H100: about 5 minutes)
    python benchmarks/bench_gpu.py --tiny                           # tiny model and workload, on CPU: checks the script

Nothing is downloaded: the model is Qwen2.5-VL-7B-Instruct's published architecture (the config values below)
with random bf16 weights created directly on the GPU, with a locally built tokenizer and processor
(tiny_models); the videos are synthetic mp4s at VSI-Bench's real sizes, 640x480 (ScanNet-like) and 1920x1440
(ScanNet++-like), 32 frames sampled from each and resized to 448x336 (3,072 video tokens per prompt).

Scenarios (random weights never write an end token, so every answer runs to the limit):
- short: 16 videos x 18 questions, 4 new tokens (VSI-Bench's default prompt);
- long: 8 videos x 18 questions (ScanNet- and ScanNet++-sized in turn), 512 new tokens (a reasoning prompt).
Pipelines (benchmarks/bench_eval.py's):
- naive: per question decode the video, run the processor, the vision encoder, a full prefill and
  transformers' generate (the original Spatial-R1 script, lmms-eval);
- shared_hf: the evaluator before the fast decoder (decode once, shared video prefix, generate, batches of 8);
- fast: the evaluator now (preparation pool, packed vision attention, shared prefix, the fast decoder's arena:
  the questions of several videos decoded together, prefilled packed, rows refilled as answers end).
naive and shared_hf run the vision encoder as transformers does (one sdpa call per window) and answer only as
many questions as their time caps allow; rates are per question.

Prints progress lines with timestamps, then one JSON line: questions/s per pipeline and scenario, the ratios,
seconds per stage (CUDA events), encoder milliseconds per video, rows per decode step, the GPU busy fraction
(NVML, sampled) and peak memory. Each pipeline runs in its own try block, so a failure is reported and the rest
still runs; a time budget skips what would not fit.
"""

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_eval  # noqa: E402

from vsibench_eval.demo import data as demo_data
from vsibench_eval.demo import tiny_models
from vsibench_eval.model.decode import unsupported_reason  # noqa: E402
from vsibench_eval.model.generation import greedy  # noqa: E402
from vsibench_eval.model.positions import use_published_positions  # noqa: E402
from vsibench_eval.model.vision_attention import use_packed_vision_attention  # noqa: E402
from vsibench_eval.settings.config import EvalConfig  # noqa: E402
from vsibench_eval.settings.protocols import apply_protocol  # noqa: E402

# Qwen/Qwen2.5-VL-7B-Instruct's config.json (the special token ids come from the local tokenizer instead).
QWEN2_5_VL_7B_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "max_window_layers": 28,
    "initializer_range": 0.02,
}
QWEN2_5_VL_7B_VISION = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "initializer_range": 0.02,
}
TINY_TEXT = QWEN2_5_VL_7B_TEXT | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
}
TINY_VISION = QWEN2_5_VL_7B_VISION | {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "fullatt_block_indexes": [1],
}

# (dataset, width, height) of the synthetic videos, alternating; all are resized to 448x336.
VIDEO_SIZES = (("scannet", 640, 480), ("scannetpp", 1920, 1440))
TINY_VIDEO_SIZES = (("scannet", 320, 240), ("scannetpp", 480, 360))
SOURCE_FPS = 10
# Video length in seconds, and the frames taken from each video (its frame count and size).
SECONDS, TINY_SECONDS = 16, 4
FRAMES = {"num_frames": 32, "target_resolution": [448, 448]}
TINY_FRAMES = {"num_frames": 8, "target_resolution": [224, 224]}  # a tiny run's prompts stay short on a CPU

# Per scenario: videos, questions per video, new tokens, and the seconds naive and shared_hf may take.
SCENARIOS = {
    "short": {"videos": 16, "questions_per_video": 18, "new_tokens": 4, "caps": {"naive": 40, "shared_hf": 40}},
    "long": {"videos": 8, "questions_per_video": 18, "new_tokens": 512, "caps": {"naive": 35, "shared_hf": 60}},
}
TINY_SCENARIOS = {
    "short": {"videos": 2, "questions_per_video": 4, "new_tokens": 4, "caps": {"naive": 60, "shared_hf": 60}},
    "long": {"videos": 8, "questions_per_video": 2, "new_tokens": 8, "caps": {"naive": 10, "shared_hf": 10}},
}
PIPELINE_ORDER = {
    "short": ("fast", "naive", "shared_hf"),
    "long": ("fast", "shared_hf", "naive"),
}
NAIVE_LONG_QUESTIONS = 2  # a naive 512-token answer takes seconds each: a sample is enough for its rate
MIN_SECONDS_TO_START = 15  # a pipeline is skipped when less of the budget is left

STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


# ---------------------------------------------------------------- setup


def build_model(tokenizer, tiny: bool, device: str):
    """Qwen2.5-VL with random weights, created on `device` (bf16 on a GPU, float32 on the CPU), sdpa attention,
    positions by the published rule, and no end token (random weights would stop at random)."""
    ids = tokenizer.convert_tokens_to_ids
    text = dict(TINY_TEXT if tiny else QWEN2_5_VL_7B_TEXT)
    special = {"bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>")}
    config = transformers.Qwen2_5_VLConfig(
        text_config=text | special | ({"vocab_size": len(tokenizer)} if tiny else {}),
        vision_config=TINY_VISION if tiny else QWEN2_5_VL_7B_VISION,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=None, pad_token_id=ids("<|endoftext|>"), do_sample=False
    )
    return use_published_positions(model.eval())


def write_video(path: Path, width: int, height: int, seed: int, seconds: int) -> None:
    """A synthetic mp4 of moving boxes: with OpenCV (mp4v) where it is installed, else with PyAV."""
    frames = demo_data.render_frames(width, height, seconds * SOURCE_FPS, np.random.default_rng(seed))
    try:
        import cv2
    except ImportError:
        demo_data.write_video(path, frames, SOURCE_FPS)
        return
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), SOURCE_FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4v")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # RGB -> BGR
    writer.release()


def build_videos(out_dir: Path, count: int, sizes, seconds: int) -> list[Path]:
    jobs = []
    for v in range(count):
        dataset, width, height = sizes[v % len(sizes)]
        path = out_dir / dataset / f"scene{v:04d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((path, width, height, v, seconds))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda job: write_video(*job), jobs))
    return [job[0] for job in jobs]


# ---------------------------------------------------------------- measuring


class BusySampler:
    """The GPU's busy fraction while a pipeline runs: NVML's utilization (the share of time a kernel was
    running), sampled every 0.1 s in a thread; None where NVML is not available."""

    def __init__(self, device: str):
        self.samples: list[int] = []
        self.device = device
        self.available = device.startswith("cuda")
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.available:
            try:
                torch.cuda.utilization(self.device)
            except Exception:
                self.available = False
        if self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.1):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        return False

    @property
    def busy(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def run_pipeline(name, model, processor, config, questions, stop_at, device) -> dict:
    """One pipeline on a scenario's questions: rate, stages, busy fraction, peak memory, and for fast whether its
    decode step ran as a CUDA graph."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    use_vision_attention(model, packed=name == "fast")
    with BusySampler(device) as sampler:
        run = bench_eval.measure(name, model, processor, config, questions, stop_at)
        if cuda:
            torch.cuda.synchronize()
    timer = run["timer"]
    stages, steps = timer.seconds, timer.decode_steps
    answered = len(run["answers"])
    return {
        "questions": answered,
        "videos": run["videos"],
        "video_decodes": run["decodes"],
        "seconds": round(run["seconds"], 2),
        "questions_per_second": round(answered / run["seconds"], 3) if run["seconds"] > 0 else None,
        "stage_seconds": bench_eval.rounded(stages),
        "stage_fraction": round(sum(stages.values()) / run["seconds"], 3) if run["seconds"] > 0 else None,
        "gpu_busy": sampler.busy,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "encoder_ms_per_video": round(1000 * stages["vision_encoder"] / run["decodes"], 1) if run["decodes"] else None,
        "prefill_tokens": timer.prefill_tokens,
        "decode_steps": steps,
        "rows_per_decode_step": round(timer.decoded_tokens / steps, 2) if steps else None,
        "answers": run["answers"],
    } | ({"decoder_graphs": graphs_used(run["decoder"])} if run["decoder"] is not None else {})


def graphs_used(arena) -> bool | str:
    return "off: " + arena.graph_failure if arena.graph_failure else arena.graphs


def use_vision_attention(model, packed: bool) -> None:
    """The vision encoder's attention: packed (vision_attention.py) for the fast pipeline, transformers' own
    per-window sdpa calls for the baselines, as the evaluator ran before."""
    model.model.visual.config._attn_implementation = "sdpa"
    if packed:
        use_packed_vision_attention(model)


def error_text(failure: BaseException) -> str:
    where = traceback.extract_tb(failure.__traceback__)[-1]
    return f"{type(failure).__name__}: {failure} (at {Path(where.filename).name}:{where.lineno})"


def run_scenario(name, spec, model, processor, questions, deadline, device, frames: dict) -> dict:
    """The scenario's pipelines, most important first."""
    config = EvalConfig(
        **frames,
        fps=0,  # the same frame count from every video, as from VSI-Bench's long videos
        batch_size=8,  # shared_hf's fixed batches (fast uses the evaluator's defaults)
        max_new_tokens=spec["new_tokens"],
        prompt_type="default",
    )
    apply_protocol(config, "qwen2_5_vl")  # protocol none: the evaluator's defaults for the rest
    result = {"new_tokens": spec["new_tokens"], "questions": len(questions), "pipelines": {}}
    for pipeline in PIPELINE_ORDER[name]:
        left = deadline - time.perf_counter()
        if left < MIN_SECONDS_TO_START:
            result["pipelines"][pipeline] = {"skipped": f"time budget ({left:.0f}s left)"}
            log(f"{name}/{pipeline}: skipped, {left:.0f}s of the budget left")
            continue
        cap = spec["caps"].get(pipeline)
        stop_at = min(deadline - 5, time.perf_counter() + cap) if cap else deadline - 5
        subset = questions[:NAIVE_LONG_QUESTIONS] if (name, pipeline) == ("long", "naive") else questions
        try:
            stats = run_pipeline(pipeline, model, processor, config, subset, stop_at, device)
        except Exception as failure:
            result["pipelines"][pipeline] = {"error": error_text(failure)}
            log(f"{name}/{pipeline}: FAILED {error_text(failure)}")
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        result["pipelines"][pipeline] = stats
        log(
            f"{name}/{pipeline}: {stats['questions']} questions in {stats['seconds']}s "
            f"({stats['questions_per_second']} q/s), busy {stats['gpu_busy']}, stages {stats['stage_seconds']}, "
            f"encoder {stats['encoder_ms_per_video']} ms/video, {stats['rows_per_decode_step']} rows/step, "
            f"peak {stats['peak_memory_gib']} GiB"
        )
    add_ratios(result)
    return result


def add_ratios(result: dict) -> None:
    """fast's rate over the others', and how many answers fast and shared_hf share (bf16 kernels of other
    shapes may break a near-tie differently)."""
    pipelines = result["pipelines"]
    rate = {name: p.get("questions_per_second") for name, p in pipelines.items()}
    for other in ("naive", "shared_hf"):
        if rate.get("fast") and rate.get(other):
            result[f"fast_over_{other}"] = round(rate["fast"] / rate[other], 2)
    fast, shared = (pipelines.get(name, {}).get("answers") for name in ("fast", "shared_hf"))
    if fast and shared:
        common = [qid for qid in shared if qid in fast]
        result["fast_answers_equal_shared_hf"] = f"{sum(fast[q] == shared[q] for q in common)}/{len(common)}"
    for stats in pipelines.values():
        stats.pop("answers", None)


def warm_up(model, processor, questions, device, frames: dict) -> dict:
    """First calls pay one-off costs (CUDA kernels and libraries, graph capture): each pipeline answers a few
    short questions before the clock runs."""
    config = EvalConfig(**frames, fps=0, batch_size=8, max_new_tokens=4)
    apply_protocol(config, "qwen2_5_vl")
    seconds = {}
    for pipeline, count in (("fast", 18), ("shared_hf", 8), ("naive", 1)):
        started = time.perf_counter()
        try:
            bench_eval.measure(pipeline, model, processor, config, questions[:count])
        except Exception as failure:
            log(f"warm-up {pipeline}: FAILED {error_text(failure)}")
        seconds[pipeline] = round(time.perf_counter() - started, 2)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return seconds


# ---------------------------------------------------------------- main


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import decord

        found["decord"] = decord.__version__
    except Exception as failure:
        found["decord"] = f"unavailable ({type(failure).__name__})"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model and workload (checks the script on a CPU)")
    parser.add_argument("--budget_s", type=float, default=300, help="stop starting pipelines after this long")
    parser.add_argument("--out", help="also write the JSON result to this file (rewritten after every scenario)")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        # the full run builds the 7B architecture (about 16 GB of weights): on a CPU the kernel kills it for memory
        parser.exit(2, f"{parser.prog}: error: no CUDA GPU here; run with --tiny to check the script on a CPU\n")
    device = "cuda:0" if torch.cuda.is_available() and not args.tiny else "cpu"
    deadline = STARTED + args.budget_s
    scenarios, frames = (TINY_SCENARIOS, TINY_FRAMES) if args.tiny else (SCENARIOS, FRAMES)
    transformers.utils.logging.disable_progress_bar()
    result = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"}
    result |= {"versions": versions(), "budget_s": args.budget_s, "scenarios": {}}
    log(f"device {result['device']}, {json.dumps(result['versions'])}")

    def save():
        result["total_seconds"] = round(time.perf_counter() - STARTED, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(result) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            tokenizer = tiny_models.build_tokenizer()
            processor = tiny_models.build_processor("qwen2_5_vl", tokenizer)
            processor.tokenizer.padding_side = "left"
            tick = time.perf_counter()
            model = build_model(tokenizer, args.tiny, device)
            parameters = sum(p.numel() for p in model.parameters())
            result["model"] = f"Qwen2.5-VL{' (tiny)' if args.tiny else '-7B'} architecture, random weights, " + (
                f"{parameters / 1e9:.2f}B parameters, {str(model.dtype).removeprefix('torch.')}, sdpa"
            )
            result["setup_seconds"] = {"model": round(time.perf_counter() - tick, 1)}
            log(f"model: {result['model']} in {result['setup_seconds']['model']}s")
            reason = unsupported_reason(model, greedy(model, processor, 4))
            if reason:
                raise RuntimeError(f"the fast decoder does not apply: {reason}")
            tick = time.perf_counter()
            count = max(spec["videos"] for spec in scenarios.values())
            sizes, seconds = (TINY_VIDEO_SIZES, TINY_SECONDS) if args.tiny else (VIDEO_SIZES, SECONDS)
            paths = build_videos(tmp / "videos", count, sizes, seconds)
            result["setup_seconds"]["videos"] = round(time.perf_counter() - tick, 1)
            log(f"{count} synthetic videos written in {result['setup_seconds']['videos']}s")
            per_video = max(spec["questions_per_video"] for spec in scenarios.values())
            questions = bench_eval.question_records(paths, per_video, np.random.default_rng(0))
            result["warm_up_seconds"] = warm_up(model, processor, questions, device, frames)
            log(f"warm-up: {result['warm_up_seconds']}")
        except Exception as failure:
            result["error"] = f"setup failed: {error_text(failure)}"
            log(result["error"])
            save()
            print(json.dumps(result), flush=True)
            sys.exit(1)

        for name, spec in scenarios.items():
            chosen = [
                q
                for q in questions
                if paths.index(Path(q["video_path"])) < spec["videos"]
                and q["id"] % per_video < spec["questions_per_video"]
            ]
            try:
                outcome = run_scenario(name, spec, model, processor, chosen, deadline, device, frames)
            except Exception as failure:
                outcome = {"error": error_text(failure)}
                log(f"{name}: FAILED {outcome['error']}")
            result["scenarios"][name] = outcome
            save()

    result["targets"] = targets(result["scenarios"])
    save()
    log("done")
    print(json.dumps(result), flush=True)


def targets(scenarios: dict) -> dict:
    """The goals set for the evaluator on one H100, as measured here."""
    short, long = scenarios.get("short", {}), scenarios.get("long", {})
    short_rate, long_rate = (s.get("pipelines", {}).get("fast", {}).get("questions_per_second") for s in (short, long))
    return {
        "short_fast_at_least_45_per_s": short_rate is not None and short_rate >= 45,
        "long_fast_at_least_10_per_s": long_rate is not None and long_rate >= 10,
        "short_fast_at_least_20x_naive": short.get("fast_over_naive", 0) >= 20,
        "long_fast_at_least_3x_shared_hf": long.get("fast_over_shared_hf", 0) >= 3,
    }


if __name__ == "__main__":
    main()
