"""Run lmms-eval with a record of every generate() call; for benchmarks/compare_lmms_eval.py.

Runs in a separate environment that has lmms-eval 0.7.3 installed (never the project's): it imports only
torch, transformers and lmms_eval. Usage:

    LMMS_EVAL_CALLS=calls.jsonl python lmms_eval_hook.py --model qwen2_5_vl --model_args ... --tasks ...

Each line of the calls file describes one generate() call: the prompt's token ids, a SHA-256 of the pixel
values, the video grid, Qwen2.5-VL's seconds per temporal grid, the generation settings in force after
transformers merged the checkpoint's generation_config.json, and the new tokens with their text.
"""

import hashlib
import json
import os
import sys

import torch
import transformers
from transformers.generation.utils import GenerationMixin


def fingerprint(kwargs) -> dict:
    """What a generate() call was given, in a form that compares across processes."""
    pixels = kwargs["pixel_values_videos"].detach().to(torch.float32).contiguous().cpu()
    record = {
        "input_ids": kwargs["input_ids"][0].tolist(),
        "pixels_sha256": hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
        "pixels_shape": list(pixels.shape),
        "video_grid_thw": kwargs["video_grid_thw"][0].tolist(),
    }
    if kwargs.get("second_per_grid_ts") is not None:
        record["second_per_grid_ts"] = [float(value) for value in kwargs["second_per_grid_ts"]]
    return record


def main() -> None:
    calls_path = os.environ["LMMS_EVAL_CALLS"]
    original = GenerationMixin.generate

    def recorded_generate(self, *args, **kwargs):
        record = fingerprint(kwargs)
        options = {key: value for key, value in kwargs.items() if not isinstance(value, torch.Tensor)}
        options.pop("generation_config", None)
        in_force, _ = self._prepare_generation_config(kwargs.get("generation_config"), **options)
        keys = ("max_new_tokens", "do_sample", "num_beams", "repetition_penalty", "eos_token_id")
        record["generation"] = {key: getattr(in_force, key) for key in keys}
        output = original(self, *args, **kwargs)
        new_tokens = output[0, kwargs["input_ids"].shape[1] :]
        record["new_tokens"] = new_tokens.tolist()
        with open(calls_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return output

    GenerationMixin.generate = recorded_generate
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
