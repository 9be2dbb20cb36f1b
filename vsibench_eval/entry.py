"""The two ways into a run: `main` (the command line: `python eval_qwen.py`, `vsibench-eval`) and `evaluate`
(Python, e.g. from a training loop). The root eval_qwen.py re-exports both beside its editable config block.

Data flow: data file -> question records -> shards grouped by video (one worker process each)
-> frames -> prompts -> generations -> shard JSONL -> merged results JSONL -> scores -> log and summary.
"""

import json
import logging
import sys

from vsibench_eval.errors import DataError
from vsibench_eval.model.families import QWEN_VL_MODEL_TYPES
from vsibench_eval.running.spawning import main_script_problem
from vsibench_eval.running.stopping import Interrupted, stop_signals_interrupt
from vsibench_eval.settings.config import EvalConfig, config_from_keywords, parse_config


class RunFailed(RuntimeError):
    """evaluate(): the run ended without a result for every question, or stopped on an error; its log says why.
    `status` is the command line's exit status, `run_dir` the run directory (resume it with --resume)."""

    def __init__(self, status: int, run_dir):
        log = next(run_dir.glob("vsibench_eval_*.log"), run_dir)
        super().__init__(f"the run in {run_dir} ended with exit status {status}; see {log}")
        self.status, self.run_dir = status, run_dir


def main(defaults: EvalConfig, argv: list[str] | None = None) -> int:
    config, given = parse_config(defaults, sys.argv[1:] if argv is None else argv)
    with stop_signals_interrupt():  # a stop signal while starting (loading torch, finding checkpoints) ends it cleanly
        try:
            return run_command_line(config, given)
        except Interrupted as stop:  # one after a run directory is made is handled by the run (running/launch.py)
            print(f"interrupted by {stop.signal_name} while starting; nothing was written", file=sys.stderr)
            return stop.status


def run_command_line(config: EvalConfig, given: set[str]) -> int:
    """main's work: one run, a sweep, or a torchrun rank."""
    # torch and transformers load only now, so that --help and a bad flag answer at once
    from vsibench_eval.running.launch import main_torchrun, run_command, torchrun_ranks
    from vsibench_eval.running.sweep import is_sweep, model_names, run_sweep

    try:
        models = model_names(config.model_name)  # glob patterns expanded; DataError when one matches nothing
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not torchrun_ranks() and (problem := main_script_problem()):
        print(f"error: {problem}", file=sys.stderr)
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
    directory, settings). The keywords are EvalConfig's fields (settings/config.py).

    Given `model` and `processor` (e.g. between training steps), the questions are answered in this process on the
    model's device, without reloading it or starting workers; its train/eval mode, grad mode and positions are left
    as found. `model_name` then only names the run (default: the checkpoint the model was loaded from). Without
    `model`, it runs as the command line does (`model_name` is loaded by worker processes). Either way the run
    directory holds the usual files. A bad setting raises DataError naming it, and so does a main script the worker
    processes cannot import again (one read from standard input, or one calling evaluate() outside
    `if __name__ == "__main__":`); a run that ends without a result for every question raises RunFailed."""
    if model is None and processor is not None:
        raise DataError("processor: given without a model; give both, or model_name alone")
    if model is None and (problem := main_script_problem()):  # before torch loads: the error comes at once
        raise DataError(f"{problem}, or pass model= and processor= to answer in this process")
    from vsibench_eval.running.launch import run_single
    from vsibench_eval.running.sweep import is_sweep, model_names

    settings, given = config_from_keywords(config)
    if model is not None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in QWEN_VL_MODEL_TYPES:
            accepted = ", ".join(QWEN_VL_MODEL_TYPES)
            raise DataError(f"model: model_type {model_type!r} is not a Qwen-VL model ({accepted})")
        if processor is None:
            raise DataError("processor: needed with a model (AutoProcessor.from_pretrained of its checkpoint)")
        if settings.backend != "transformers":
            raise DataError(f"backend: {settings.backend} asks a server; with a model given, leave backend unset")
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
