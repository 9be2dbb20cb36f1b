"""eval_qwen.py under torchrun: the same results as a single-process run, one run directory, resume."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import read_results

import eval_qwen
from config import EvalConfig

ROOT = Path(__file__).resolve().parent.parent


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run([*command, "eval_qwen.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_two_ranks_give_the_single_process_results_then_resume(demo_dirs, demo_run, tmp_path, capsys):
    reference = read_results(demo_run("qwen2_5_vl"))
    run_dir = tmp_path / "shared" / "run1"
    flags = ["--demo", "--demo_dir", str(demo_dirs("qwen2_5_vl")), "--output_dir_base", str(tmp_path / "runs")]
    flags += ["--protocol", "none"]  # as the in-process reference run (EvalConfig()), not __main__'s protocol
    job = torchrun(*flags, "--run_dir", str(run_dir))
    assert job.returncode == 0, job.stderr[-3000:]
    assert read_results(run_dir) == reference
    workers = json.loads((run_dir / "summary.json").read_text())["workers"]
    assert sorted(w["rank"] for w in workers) == [0, 1] and sum(w["questions"] for w in workers) == len(reference)
    assert "[rank-1]" in (run_dir / "vsibench_eval_default.log").read_text()

    # a run directory holding a run is never reused for a new run
    assert eval_qwen.main(EvalConfig(), [*flags, "--run_dir", str(run_dir)]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err

    # lose the second half of each shard, as a job stopped midway would, and resume under torchrun
    for shard in (run_dir / "shards").glob("shard_*.jsonl"):
        lines = shard.read_text().splitlines(keepends=True)
        shard.write_text("".join(lines[: len(lines) // 2]))
    job = torchrun("--resume", str(run_dir))
    assert job.returncode == 0, job.stderr[-3000:]
    assert read_results(run_dir) == reference
    ids = [json.loads(line)["id"] for p in (run_dir / "shards").glob("shard_*.jsonl") for line in p.open()]
    assert sorted(ids) == [r["id"] for r in reference]
