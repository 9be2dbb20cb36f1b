"""eval_qwen.py under torchrun: a stop signal, one run directory, and resumes that give the results of a
single-process run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_results
from test_never_lose_a_run import SMALL, shard_ids, wait_until_gone

import eval_qwen
from vsibench_eval.running.stopping import PAUSE_DIR
from vsibench_eval.settings.config import EvalConfig

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "eval_qwen.py"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_two_ranks_stop_on_sigterm_then_resume_to_the_single_process_results(demo_dirs, demo_run, tmp_path, capsys):
    reference = read_results(demo_run("qwen2_5_vl", *SMALL))
    run_dir = tmp_path / "shared" / "run1"
    flags = ["--demo", "--demo_dir", str(demo_dirs("qwen2_5_vl")), "--run_dir", str(run_dir), *SMALL]
    flags += ["--protocol", "none"]  # as the in-process reference run (EvalConfig()), not __main__'s protocol

    # a job that SLURM stops: torchrun passes SIGTERM on to its ranks, each stops with its batches kept
    pause = tmp_path / "pause"
    pause.mkdir()
    with open(tmp_path / "stderr.txt", "w+") as output:
        job = subprocess.Popen(
            [*TORCHRUN, *flags], cwd=ROOT, env=os.environ | {PAUSE_DIR: str(pause)}, stderr=output, text=True
        )
        try:
            while not all((pause / f"flushed_{rank}").exists() for rank in (0, 1)):
                assert job.poll() is None, Path(output.name).read_text()[-3000:]
                time.sleep(0.05)
            ranks = [int((pause / f"flushed_{rank}").read_text()) for rank in (0, 1)]
            job.send_signal(signal.SIGTERM)
            assert job.wait(120) != 0
        finally:
            job.kill()
        stderr = Path(output.name).read_text()
    wait_until_gone(ranks)
    for rank in (0, 1):
        assert f"rank {rank}: interrupted by SIGTERM; resume with the same torchrun command and --resume {run_dir}" in (
            stderr
        )
    kept = shard_ids(run_dir)
    assert len(kept) >= 2 and len(kept) == len(set(kept))

    # a run directory holding a run is never reused for a new run
    assert eval_qwen.main(EvalConfig(), flags) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err

    # cut each shard mid-batch and mid-video, as a job killed in the middle of a write would leave it: rank 0
    # answers video 41069025 (questions 0, 1 | 2, 6 | ...), rank 1 starts with scene0011_00 (18, 20 | 22)
    for shard in (run_dir / "shards").glob("shard_*.jsonl"):
        lines = shard.read_text().splitlines(keepends=True)
        shard.write_text(lines[0])
    assert sorted(shard_ids(run_dir)) == [0, 18]
    job = torchrun(*flags, "--resume", str(run_dir))  # the requeued job: the same command, --resume added
    assert job.returncode == 0, job.stderr[-3000:]
    assert read_results(run_dir) == reference
    ids = shard_ids(run_dir)
    assert sorted(ids) == sorted(set(ids)) == [r["id"] for r in reference]
    workers = json.loads((run_dir / "summary.json").read_text())["workers"]
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert "[rank-1]" in (run_dir / "vsibench_eval_default.log").read_text()
