"""Every script under benchmarks/ runs: its smallest path (--tiny, a one-video workload, --help, or its imports),
so that none can rot unseen again."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.e2e
def test_bench_eval_runs_a_one_video_workload():
    done = run(
        str(BENCHMARKS / "bench_eval.py"),
        "--videos",
        "1",
        "--questions_per_video",
        "2",
        "--long_videos",
        "1",
        "--long_new_tokens",
        "8",
        "--repeats",
        "1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["short"]["questions"] == 2 and set(result["short"]["seconds"]) >= {"naive", "shared_hf", "fast"}


@pytest.mark.e2e
def test_bench_gpu_tiny_runs_every_scenario_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    done = run(str(BENCHMARKS / "bench_gpu.py"), "--tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and "error" not in result
    assert set(result["scenarios"]) >= {"short", "long"}
    assert all("error" not in scenario for scenario in result["scenarios"].values())
    long_fast = result["scenarios"]["long"]["pipelines"]["fast"]
    assert long_fast["videos"] >= 8 and long_fast["questions"] == 16  # 8 videos, ScanNet- and ScanNet++-sized
    assert long_fast["rows_per_decode_step"] >= 1 and long_fast["encoder_ms_per_video"] > 0
    assert "gpu_busy" in long_fast and long_fast["decode_steps"] > 0


@pytest.mark.slow  # a fresh interpreter loads torch and transformers
def test_bench_gpu_refuses_a_machine_without_a_gpu_unless_tiny():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even where the tests run beside one
    done = run(str(BENCHMARKS / "bench_gpu.py"), env=env)
    assert done.returncode == 2
    assert "--tiny" in done.stderr and "no CUDA GPU" in done.stderr


@pytest.mark.slow  # a fresh interpreter loads torch and transformers
def test_compare_lmms_eval_imports_and_answers_help():
    done = run(str(BENCHMARKS / "compare_lmms_eval.py"), "--help")
    assert done.returncode == 0, done.stderr
    assert "--lmms_python" in done.stdout


def test_lmms_eval_hook_imports():
    # lmms-eval lives in its own environment; here the hook's own imports and definitions must load
    module = runpy.run_path(str(BENCHMARKS / "lmms_eval_hook.py"), run_name="hook")
    assert callable(module["main"]) and callable(module["fingerprint"])


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.sh")))
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(BENCHMARKS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
