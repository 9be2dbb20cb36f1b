"""`pip install .`: one top-level name (vsibench_eval) and two commands that work from any directory, and a user's
program with modules of its own named like ours (config, util, tables, report, worker, qwen_vl_utils) calls
evaluate() and still imports its own modules afterwards."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_results

ROOT = Path(__file__).resolve().parent.parent
USER_MODULES = ("config", "util", "tables", "report", "worker", "qwen_vl_utils")

USER_SCRIPT = """
import sys, json
import config  # the user's own, imported before the evaluator

if __name__ == "__main__":  # the evaluator's workers are spawned processes: the entry point is guarded
    before = list(sys.path)
    import vsibench_eval
    assert sys.path == before, "sys.path changed"
    summary = vsibench_eval.evaluate(demo=True, demo_dir=sys.argv[1], output_dir_base=sys.argv[2], protocol="none")
    import util, tables, report, worker, qwen_vl_utils
    mine = [m.WHOSE for m in (config, util, tables, report, worker, qwen_vl_utils)]
    print(json.dumps({"mine": mine, "overall": summary["overall"], "n": summary["n"]}))
"""


@pytest.mark.e2e
def test_pip_install_beside_a_users_own_modules(demo_dirs, demo_run, tmp_path):
    source = tmp_path / "source"  # pip builds in the source tree: build from a copy, not the checkout
    skipped = {"tests", "demo_data", "demo_runs", "results", "build", "docs", "benchmarks"}

    def ignore(folder, names):
        return [n for n in names if n.startswith(".") or (n in skipped and (Path(folder) / n).is_dir())]

    shutil.copytree(ROOT, source, ignore=ignore)
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*install, str(target), str(source)], check=True, capture_output=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "vsibench_eval"]
    env = {**os.environ, "PYTHONPATH": str(target)}
    user = tmp_path / "user_project"
    user.mkdir()
    for name in USER_MODULES:
        (user / f"{name}.py").write_text(f"WHOSE = 'user {name}'\n")
    (user / "train.py").write_text(USER_SCRIPT)

    def run(*command):
        return subprocess.run([sys.executable, *command], cwd=user, env=env, capture_output=True, text=True)

    demo = demo_dirs("qwen2_5_vl")
    evaluated = run("train.py", str(demo), str(user / "runs"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout.splitlines()[-1])
    assert result["mine"] == [f"user {name}" for name in USER_MODULES]
    assert result["n"] == 40

    results = demo_run("qwen2_5_vl") / "vsibench_results_default.jsonl"
    scored = run(str(target / "bin" / "vsibench-score"), str(results), "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["n"] == 40

    runs = user / "command_runs"
    evaluated = run(
        str(target / "bin" / "vsibench-eval"), "--demo", "--demo_dir", str(demo), "--output_dir_base", str(runs)
    )
    assert evaluated.returncode == 0, evaluated.stderr
    (run_dir,) = runs.glob("*/*")
    assert [r["prediction"] for r in read_results(run_dir)] == [r["prediction"] for r in read_results(results.parent)]
