"""Evaluate a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, Qwen4-Exp or a fine-tune) on VSI-Bench.

Edit the config in the `__main__` block at the bottom, then run

    python eval_qwen.py                       # with the values set there
    python eval_qwen.py --num_frames 16       # any field can be overridden as --field_name value
    python eval_qwen.py --protocol spatial_r1 # evaluate exactly as a reference did (docs/protocols.md)
    python eval_qwen.py --demo                # tiny model trained for seconds on a synthetic set, CPU, a minute
    python eval_qwen.py --model_name 'runs/*/checkpoint-*'   # a sweep: each checkpoint in turn, one table

or, from Python (e.g. a training loop), `evaluate(model, processor, **config)` (docs/api.md).

The code lives in the package vsibench_eval (docs/architecture.md): main and evaluate are vsibench_eval.entry's.
Data flow: data file -> question records -> shards grouped by video (one worker process each)
-> frames -> prompts -> generations -> shard JSONL -> merged results JSONL -> scores -> log and summary.
"""

import sys

from vsibench_eval.entry import RunFailed, evaluate, main
from vsibench_eval.settings.config import EvalConfig

__all__ = ["EvalConfig", "RunFailed", "evaluate", "main"]

if __name__ == "__main__":
    # Edit these values for your run; any of them can be overridden on the command line as --field_name value.
    # The protocol sets every score-changing setting (frames, sizes, prompt, decoding; docs/protocols.md);
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
