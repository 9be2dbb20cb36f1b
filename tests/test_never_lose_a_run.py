"""Faults on the demo set: killed workers, Ctrl-C, torn shard lines, resume, out-of-memory batches, bad input."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import read_results, run_eval

import eval_qwen
from config import EvalConfig
from run_directory import make_run_dir
from worker import answer_batch

ROOT = Path(__file__).resolve().parent.parent


def start_demo_run(demo: Path, out: Path) -> subprocess.Popen:
    argv = ["--demo", "--demo_dir", str(demo), "--output_dir_base", str(out), "--num_processes", "2"]
    argv += ["--protocol", "none"]  # the in-process reference runs use EvalConfig()'s protocol, not __main__'s
    return subprocess.Popen(
        [sys.executable, "eval_qwen.py", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal job would be
    )


def wait_for_first_batch(out: Path, timeout: float = 120.0) -> tuple[Path, int]:
    """The run dir and worker 0's pid, once worker 0 has written at least one finished batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in out.glob("*/*/vsibench_eval_default.log"):
            pid = re.search(r"worker 0 \(pid (\d+)\)", log.read_text())
            shard = log.parent / "shards" / "shard_0.jsonl"
            if pid and shard.exists() and shard.read_text().count("\n") >= 1:
                return log.parent, int(pid.group(1))
        time.sleep(0.01)
    raise AssertionError("worker 0 wrote no batch in time")


def shard_ids(run_dir: Path) -> list[int]:
    return [json.loads(line)["id"] for p in (run_dir / "shards").glob("shard_*.jsonl") for line in p.open()]


def test_sigkilled_worker_then_resume_gives_the_uninterrupted_results(demo_dirs, demo_run, tmp_path):
    reference = read_results(demo_run("qwen2_5_vl"))
    process = start_demo_run(demo_dirs("qwen2_5_vl"), tmp_path / "runs")
    run_dir, pid = wait_for_first_batch(tmp_path / "runs")
    os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 1
    assert "worker 0 killed by signal SIGKILL" in stderr
    assert f"python eval_qwen.py --resume {run_dir}" in stderr
    partial = read_results(run_dir)  # what was finished is merged and kept
    assert 0 < len(partial) < len(reference)
    assert partial == [r for r in reference if r["id"] in {p["id"] for p in partial}]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] is False and summary["failed_workers"] == {"0": "killed by signal SIGKILL"}

    # a process killed mid-write leaves a torn last line: it is discarded, not parsed or kept
    with open(run_dir / "shards" / "shard_0.jsonl", "a") as shard:
        shard.write('{"id": 0, "dataset": "arkitsc')
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 0

    assert read_results(run_dir) == reference
    ids = shard_ids(run_dir)
    assert sorted(ids) == sorted(set(ids)) == [r["id"] for r in reference]  # no id written twice
    assert json.loads((run_dir / "summary.json").read_text())["complete"] is True


def test_ctrl_c_stops_cleanly_and_resume_finishes(demo_dirs, demo_run, tmp_path):
    reference = read_results(demo_run("qwen2_5_vl"))
    process = start_demo_run(demo_dirs("qwen2_5_vl"), tmp_path / "runs")
    run_dir, _ = wait_for_first_batch(tmp_path / "runs")
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert f"python eval_qwen.py --resume {run_dir}" in stderr
    kept = shard_ids(run_dir)
    assert kept and len(kept) == len(set(kept))
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir), "--num_processes", "1"]) == 0
    assert read_results(run_dir) == reference


def test_resume_refuses_to_change_what_is_computed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"num_frames": 32}))
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir), "--num_frames", "8"]) == 2
    assert "num_frames cannot change when resuming" in capsys.readouterr().err
    assert eval_qwen.main(EvalConfig(), ["--resume", str(tmp_path / "nothing")]) == 2
    assert "config.json: not found" in capsys.readouterr().err


def test_a_new_run_never_reuses_a_run_directory(tmp_path):
    config = EvalConfig(output_dir_base=str(tmp_path), model_name="/models/ckpt-100/")
    first, second = make_run_dir(config), make_run_dir(config)
    assert first != second and first.parent == second.parent == tmp_path / "ckpt-100"


def test_out_of_memory_batches_are_split_down_to_single_questions():
    calls = []

    def fits_one_at_a_time(prompts):
        calls.append(len(prompts))
        if len(prompts) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [p.upper() for p in prompts]

    assert answer_batch(fits_one_at_a_time, ["a", "b", "c", "d"]) == [(x, None) for x in "ABCD"]
    assert calls == [4, 2, 1, 1, 2, 1, 1]

    def never_fits(prompts):
        raise torch.OutOfMemoryError("CUDA out of memory")

    answers = answer_batch(never_fits, ["a", "b", "c"])
    assert [p for p, _ in answers] == ["", "", ""] and all("out of memory" in e for _, e in answers)


GOOD_ROW = {
    "id": 5,
    "dataset": "scannet",
    "scene_name": "scene0011_00",
    "question_type": "object_rel_distance",
    "question": "Which is closest?",
    "ground_truth": "A",
    "options": ["A. tv", "B. bed"],
}


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{k: v for k, v in GOOD_ROW.items() if k != "options"}], "missing column(s) options"),
        ([GOOD_ROW | {"question_type": "object_colour"}], "row id 5: column 'question_type': unknown question type"),
        ([GOOD_ROW | {"options": None}], "row id 5: column 'options': multiple-choice question without options"),
        (
            [GOOD_ROW | {"question_type": "object_counting", "ground_truth": "many", "options": None}],
            "row id 5: column 'ground_truth': numerical ground truth is not a number",
        ),
        ([GOOD_ROW, GOOD_ROW], "row id 5: column 'id': duplicate id"),
    ],
)
def test_bad_data_files_exit_2_naming_file_row_and_column(demo_dirs, tmp_path, capsys, rows, needle):
    demo = demo_dirs("qwen2_5_vl")
    data_file = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(data_file)
    argv = ["--parquet_file", str(data_file), "--video_dir", str(demo / "vsibench")]
    argv += ["--model_name", str(demo / "model")]
    assert eval_qwen.main(EvalConfig(output_dir_base=str(tmp_path / "runs")), argv) == 2
    err = capsys.readouterr().err
    assert needle in err and str(data_file) in err
    assert not (tmp_path / "runs").exists()  # rejected before a run directory or a model


@pytest.mark.parametrize("problem", ["missing model", "not qwen-vl", "missing video dir"])
def test_bad_paths_exit_2(demo_dirs, tmp_path, capsys, problem):
    demo = demo_dirs("qwen2_5_vl")
    model, video_dir = str(demo / "model"), str(demo / "vsibench")
    if problem == "missing model":
        model, needle = str(tmp_path / "no-such-model"), "no-such-model: no such directory"
    elif problem == "not qwen-vl":
        (tmp_path / "llama").mkdir()
        (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
        model, needle = str(tmp_path / "llama"), "model_type 'llama' is not a Qwen-VL model"
    else:
        video_dir, needle = str(tmp_path / "videos"), "videos: no such directory"
    argv = ["--parquet_file", str(demo / "vsibench" / "test.parquet"), "--video_dir", video_dir, "--model_name", model]
    assert eval_qwen.main(EvalConfig(output_dir_base=str(tmp_path / "runs")), argv) == 2
    assert needle in capsys.readouterr().err


def test_truncated_video_is_recorded_and_the_run_goes_on(demo_dirs, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(demo_dirs("qwen2_5_vl"), demo)
    victim = demo / "vsibench" / "scannetpp" / "0a5c013435.mp4"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a download cut off halfway
    argv = ["--demo", "--demo_dir", str(demo), "--output_dir_base", str(tmp_path / "runs"), "--num_processes", "2"]
    status, run_dir = run_eval(argv)
    assert status == 0
    records = read_results(run_dir)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 40  # nothing lost, nothing twice
    failed = [r for r in records if r["error"]]
    assert {r["scene_name"] for r in failed} == {"0a5c013435"} and len(failed) == 10
    assert all("0a5c013435.mp4: cannot decode video" in r["error"] and r["score"] == 0.0 for r in failed)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_videos"] == ["scannetpp/0a5c013435"] and summary["failed"] == 10 and summary["complete"]
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert "0a5c013435.mp4: cannot decode video" in log and "1 video(s) failed: scannetpp/0a5c013435" in log
