"""Evaluate a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL or a fine-tune) on VSI-Bench.

Edit the config in the `__main__` block at the bottom, then run

    python eval_qwen.py                       # with the values set there
    python eval_qwen.py --num_frames 16       # any field can be overridden as --field_name value
    python eval_qwen.py --protocol spatial_r1 # evaluate exactly as a reference did (README "Protocols")
    python eval_qwen.py --demo                # tiny model trained for seconds on a synthetic set, CPU, under a minute

Data flow: data file -> question records -> shards grouped by video (one worker process each)
-> frames -> prompts -> generations -> shard JSONL -> merged results JSONL -> scores -> log and summary.
"""

import sys
import time

from config import EvalConfig, parse_config, prepare
from run_files import WriteError
from stopping import Interrupted, stop_signals_interrupt
from util import DataError, shard_by_video


def main(defaults: EvalConfig, argv: list[str] | None = None) -> int:
    config, given = parse_config(defaults, sys.argv[1:] if argv is None else argv)
    # torch and transformers load only now, so that --help and a bad flag answer at once
    from launch import main_torchrun, run_workers, torchrun_ranks
    from run_directory import answered_ids, finish_run, open_run_dir, start_log

    if torchrun_ranks():
        return main_torchrun(config, given)
    try:
        config, questions, selection = prepare(config, given)
        run_dir, lock = open_run_dir(config)  # this process owns the run directory until it returns
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    resume = f"python eval_qwen.py --resume {run_dir}"
    with lock, stop_signals_interrupt():  # a stop signal before or after the workers' run stops it the same way
        log = start_log(config, run_dir, questions, selection)
        try:
            done_ids = answered_ids(run_dir, questions, log)
            started = time.perf_counter()
            failures = run_workers(config, shard_by_video(questions, config.num_processes), done_ids, run_dir, log)
            elapsed = time.perf_counter() - started
            return finish_run(config, run_dir, questions, done_ids, failures, elapsed, log, resume)
        except DataError as error:
            log.error(str(error))
            return 2
        except WriteError as error:
            log.error(f"{error}; once it can be written, resume with:\n  {resume}")
            return 1
        except Interrupted as stop:
            log.error(f"interrupted by {stop.signal_name}; finished batches are kept. Resume with:\n  {resume}")
            return stop.status


if __name__ == "__main__":
    # Edit these values for your run; any of them can be overridden on the command line as --field_name value.
    # The protocol sets every score-changing setting (frames, sizes, prompt, decoding; README "Protocols");
    # a score-changing field written here or given on the command line overrides it and the log says so.
    config = EvalConfig(
        protocol="lmms_eval",
        parquet_file="data/vsibench/test.parquet",
        video_dir="data/vsibench",
        output_dir_base="results",
        model_name="Qwen/Qwen2.5-VL-7B-Instruct",
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
