"""Evaluate a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL or a fine-tune) on VSI-Bench.

Edit the config in the `__main__` block at the bottom, then run

    python eval_qwen.py                       # with the values set there
    python eval_qwen.py --num_frames 16       # any field can be overridden as --field_name value
    python eval_qwen.py --protocol spatial_r1 # evaluate exactly as a reference did (README "Protocols")
    python eval_qwen.py --demo                # tiny model trained for seconds on a synthetic set, CPU, a minute
    python eval_qwen.py --model_name 'runs/*/checkpoint-*'   # a sweep: each checkpoint in turn, one table

or, from Python (e.g. a training loop), `evaluate(model, processor, **config)` (README "From Python").

Data flow: data file -> question records -> shards grouped by video (one worker process each)
-> frames -> prompts -> generations -> shard JSONL -> merged results JSONL -> scores -> log and summary.
"""

import json
import logging
import sys

from config import EvalConfig, config_from_keywords, parse_config
from util import QWEN_VL_MODEL_TYPES, DataError


class RunFailed(RuntimeError):
    """evaluate(): the run ended without a result for every question, or stopped on an error; its log says why.
    `status` is the command line's exit status, `run_dir` the run directory (resume it with --resume)."""

    def __init__(self, status: int, run_dir):
        log = next(run_dir.glob("vsibench_eval_*.log"), run_dir)
        super().__init__(f"the run in {run_dir} ended with exit status {status}; see {log}")
        self.status, self.run_dir = status, run_dir


def main(defaults: EvalConfig, argv: list[str] | None = None) -> int:
    config, given = parse_config(defaults, sys.argv[1:] if argv is None else argv)
    # torch and transformers load only now, so that --help and a bad flag answer at once
    from launch import main_torchrun, run_command, torchrun_ranks
    from sweep import is_sweep, model_names, run_sweep

    try:
        models = model_names(config.model_name)  # glob patterns expanded; DataError when one matches nothing
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if is_sweep(config.model_name):
        if torchrun_ranks():
            print("error: model_name: under torchrun give one checkpoint per job, not a sweep", file=sys.stderr)
            return 2
        return run_sweep(config, given, models)
    config.model_name = models[0]
    if torchrun_ranks():
        return main_torchrun(config, given)
    status, _ = run_command(config, given)
    return status


def evaluate(model=None, processor=None, **config) -> dict:
    """Evaluate a model on VSI-Bench from Python; returns what the run's summary.json holds (scores, run
    directory, settings). The keywords are EvalConfig's fields (config.py).

    Given `model` and `processor` (e.g. between training steps), the questions are answered in this process on the
    model's device, without reloading it or starting workers; its train/eval mode, grad mode and positions are left
    as found. `model_name` then only names the run (default: the checkpoint the model was loaded from). Without
    `model`, it runs as the command line does (`model_name` is loaded by worker processes). Either way the run
    directory holds the usual files. A bad setting raises DataError naming it; a run that ends without a result for
    every question raises RunFailed."""
    from launch import run_single
    from sweep import is_sweep, model_names

    if model is None and processor is not None:
        raise DataError("processor: given without a model; give both, or model_name alone")
    settings, given = config_from_keywords(config)
    if model is not None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in QWEN_VL_MODEL_TYPES:
            accepted = ", ".join(QWEN_VL_MODEL_TYPES)
            raise DataError(f"model: model_type {model_type!r} is not a Qwen-VL model ({accepted})")
        if processor is None:
            raise DataError("processor: needed with a model (AutoProcessor.from_pretrained of its checkpoint)")
        if settings.demo:
            raise DataError("demo: evaluates its own model; with a model given, set parquet_file and video_dir")
        if "model_name" not in given:
            settings.model_name = getattr(model, "name_or_path", "") or "model"
    if is_sweep(settings.model_name):
        raise DataError("model_name: evaluate() runs one model; for a sweep call it per checkpoint")
    settings.model_name = model_names(settings.model_name)[0]
    loaded = None if model is None else (model, processor)
    try:
        status, run_dir = run_single(settings, given, loaded=loaded)
    finally:
        close_log_files()
    if status != 0:
        raise RunFailed(status, run_dir)
    return json.loads((run_dir / "summary.json").read_text())


def close_log_files() -> None:
    """Close the run's log file, so that a training loop calling evaluate() many times keeps no files open."""
    for handler in list(logging.getLogger("eval_qwen").handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()


if __name__ == "__main__":
    # Edit these values for your run; any of them can be overridden on the command line as --field_name value.
    # The protocol sets every score-changing setting (frames, sizes, prompt, decoding; README "Protocols");
    # a score-changing field written here or given on the command line overrides it and the log says so.
    config = EvalConfig(
        protocol="lmms_eval",
        parquet_file="data/vsibench/test.parquet",
        video_dir="data/vsibench",
        output_dir_base="results",
        model_name="Qwen/Qwen2.5-VL-7B-Instruct",  # or a list of checkpoints / a glob pattern: a sweep
        gpu_ids="0,1,2,3",
        num_processes=4,
        batch_size=32,
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
