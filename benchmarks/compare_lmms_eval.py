"""Check protocol lmms_eval against lmms-eval 0.7.3 itself, run on the same tiny model and videos.

lmms-eval lives in its own environment (the project never imports it); give its python with --lmms_python.
The script builds the demo assets of one model family, runs lmms-eval's vsibench task on them offline (a
local parquet, videos under $HF_HOME/vsibench) with benchmarks/lmms_eval_hook.py recording every generate()
call, then builds each question's inputs with this project's functions under --protocol lmms_eval, in
bfloat16 and at batch size 1 as lmms-eval runs, and prints one JSON line: how many of lmms-eval's calls got
exactly our token ids, pixel values, grid and time code, the same generation settings, and the same answer.

    python benchmarks/compare_lmms_eval.py --lmms_python /tmp/lmms-venv/bin/python --family qwen3_vl

Setting up that environment (about 2 minutes here): python3.11 -m venv /tmp/lmms-venv, then
/tmp/lmms-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==5.24.0 decord==0.6.0
"filelock<4" qwen-vl-utils==0.0.14 lmms-eval==0.7.3.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vsibench_eval.demo.assets import ensure_demo  # noqa: E402
from vsibench_eval.inputs.frames import load_video  # noqa: E402
from vsibench_eval.inputs.prompts import build_prompt  # noqa: E402
from vsibench_eval.inputs.questions import group_by_video, load_questions  # noqa: E402
from vsibench_eval.model.generation import (  # noqa: E402
    chat_text,
    decoding_config,
    generate_plain,
    greedy,
    load_model,
    processor_inputs,
)
from vsibench_eval.running.prepare import model_type_of  # noqa: E402
from vsibench_eval.running.video_prep import frame_rules  # noqa: E402
from vsibench_eval.settings.config import EvalConfig  # noqa: E402
from vsibench_eval.settings.protocols import apply_protocol  # noqa: E402

HOOK = Path(__file__).resolve().parent / "lmms_eval_hook.py"
TASK_YAML = """include: {vsibench_yaml}
task: vsibench_local
dataset_path: parquet
dataset_name: null
dataset_kwargs:
  data_files:
    test: {parquet}
"""


def run_lmms_eval(lmms_python: str, demo: Path, family: str, work: Path) -> list[dict]:
    """lmms-eval's generate() calls on the demo set (benchmarks/lmms_eval_hook.py)."""
    where = subprocess.run(
        [lmms_python, "-c", "import lmms_eval, os; print(os.path.dirname(lmms_eval.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tasks, home = work / "tasks", work / "hf_home"
    tasks.mkdir(parents=True, exist_ok=True)
    home.mkdir(exist_ok=True)
    (tasks / "vsibench_local.yaml").write_text(
        TASK_YAML.format(
            vsibench_yaml=f"{where}/tasks/vsibench/vsibench.yaml", parquet=demo / "vsibench" / "test.parquet"
        )
    )
    if not (home / "vsibench").exists():
        (home / "vsibench").symlink_to(demo / "vsibench")
    calls = work / "calls.jsonl"
    calls.unlink(missing_ok=True)
    env = os.environ | {
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "LMMS_EVAL_CALLS": str(calls),
    }
    model_args = f"pretrained={demo / 'model'},device=cpu,device_map=cpu"
    command = [lmms_python, str(HOOK), "--model", family, "--model_args", model_args, "--tasks", "vsibench_local"]
    command += ["--include_path", str(tasks), "--batch_size", "1", "--output_path", str(work / "lmms_out")]
    subprocess.run(command, check=True, env=env)
    return [json.loads(line) for line in calls.read_text().splitlines()]


def give_qwen_generation_config(model_dir: Path) -> None:
    """A generation_config.json shaped like Qwen2.5-VL-7B-Instruct's (sampling fields, repetition penalty 1.05,
    two eos ids), so that what each tool inherits from it is compared too."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids
    config = {"bos_token_id": ids("<|endoftext|>"), "pad_token_id": ids("<|endoftext|>"), "do_sample": True}
    config |= {"eos_token_id": [ids("<|im_end|>"), ids("<|endoftext|>")], "repetition_penalty": 1.05}
    config |= {"temperature": 0.1, "top_p": 0.001, "top_k": 1}
    (model_dir / "generation_config.json").write_text(json.dumps(config, indent=2))


def key(input_ids: list[int], pixels_sha256: str) -> str:
    return hashlib.sha256(json.dumps([input_ids, pixels_sha256]).encode()).hexdigest()


def our_calls(demo: Path) -> dict[str, dict]:
    """Each demo question's inputs and answer under protocol lmms_eval, by key(input ids, pixels)."""
    model_dir = str(demo / "model")
    config = EvalConfig(protocol="lmms_eval", model_name=model_dir)
    apply_protocol(config, model_type_of(model_dir))
    model, processor, _ = load_model(model_dir, "cpu", config.mrope_positions, dtype=torch.bfloat16)  # as lmms-eval
    decoding = decoding_config(model, processor, config.repetition_penalty, config.eos_tokens)
    in_force, _ = model._prepare_generation_config(greedy(model, processor, config.max_new_tokens, decoding))
    keys = ("max_new_tokens", "do_sample", "num_beams", "repetition_penalty", "eos_token_id")
    generation = {k: getattr(in_force, k) for k in keys}
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    questions = load_questions(str(demo / "vsibench" / "test.parquet"), str(demo / "vsibench"))
    ours = {}
    for path, video_questions in group_by_video(questions).items():
        target = tuple(config.target_resolution)
        video = load_video(path, config.num_frames, config.fps, target, factor, frame_rules(config))
        for question in video_questions:
            prompt = build_prompt(question, config.prompt_type, None, "", config.prompt_format)
            text = chat_text(processor, prompt, config.system_prompt)
            inputs = processor_inputs(processor, video, [text], config.position_fps)
            pixels = inputs["pixel_values_videos"].to(torch.float32).contiguous().numpy().tobytes()
            record = {"id": question["id"], "video_grid_thw": video.grid_thw, "generation": generation}
            if "second_per_grid_ts" in inputs:
                record["second_per_grid_ts"] = [float(v) for v in inputs["second_per_grid_ts"]]
            answer = generate_plain(
                model, processor, video, [text], config.position_fps, config.max_new_tokens, decoding
            )[0]
            record["answer"] = answer
            ours[key(inputs["input_ids"][0].tolist(), hashlib.sha256(pixels).hexdigest())] = record
    return ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmms_python", required=True, help="python of an environment with lmms-eval 0.7.3")
    parser.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "qwen3_vl"))
    parser.add_argument("--work", default="/tmp/compare_lmms_eval")
    parser.add_argument("--reuse", action="store_true", help="reuse the lmms-eval calls of an earlier run in --work")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work) / args.family
    demo = work / "demo"
    ensure_demo(demo, family=args.family, trained=False)  # random weights, as the README reports
    give_qwen_generation_config(demo / "model")
    if args.reuse and (work / "calls.jsonl").is_file():
        theirs = [json.loads(line) for line in (work / "calls.jsonl").read_text().splitlines()]
    else:
        theirs = run_lmms_eval(args.lmms_python, demo, args.family, work)
    ours = our_calls(demo)
    tokenizer_dir = str(demo / "model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    same = {"inputs": 0, "grid": 0, "time_code": 0, "generation": 0, "answer": 0}
    mismatches = []
    for call in theirs:
        record = ours.get(key(call["input_ids"], call["pixels_sha256"]))
        if record is None:
            mismatches.append({"input_ids_length": len(call["input_ids"]), "pixels_shape": call["pixels_shape"]})
            continue
        answer = tokenizer.decode(call["new_tokens"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        same["inputs"] += 1
        same["grid"] += record["video_grid_thw"] == call["video_grid_thw"]
        same["time_code"] += record.get("second_per_grid_ts") == call.get("second_per_grid_ts")
        same["generation"] += record["generation"] == call["generation"]
        same["answer"] += record["answer"] == answer
    summary = {
        "family": args.family,
        "questions": len(pd.read_parquet(demo / "vsibench" / "test.parquet")),
        "lmms_eval_calls": len(theirs),
        "same": same,
        "first_mismatches": mismatches[:3],
        "generation_in_force": theirs[0]["generation"] if theirs else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
