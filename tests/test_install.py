"""`pip install .`: the two commands work from any directory, and the project's qwen_vl_utils stays out of the
top level of site-packages (the PyPI package of that name is not hidden from other programs)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import read_results

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_gives_both_commands(demo_dirs, demo_run, tmp_path):
    source = tmp_path / "source"  # pip builds in the source tree: build from a copy, not the checkout
    skipped = {"tests", "demo_data", "demo_runs", "results", "build"}  # folders, beside the modules and metadata

    def ignore(folder, names):
        return [n for n in names if n.startswith(".") or (n in skipped and (Path(folder) / n).is_dir())]

    shutil.copytree(ROOT, source, ignore=ignore)
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*install, str(target), str(source)], check=True, capture_output=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "vsibench_eval"]
    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*command):
        return subprocess.run([sys.executable, *command], cwd=elsewhere, env=env, capture_output=True, text=True)

    hidden = run("-c", "import qwen_vl_utils")
    assert "No module named 'qwen_vl_utils'" in hidden.stderr
    api = run("-c", "from vsibench_eval import evaluate; import eval_qwen; print(eval_qwen.__file__)")
    assert api.returncode == 0 and api.stdout.startswith(str(target / "vsibench_eval" / "modules")), api.stderr

    results = demo_run("qwen2_5_vl") / "vsibench_results_default.jsonl"
    scored = run(str(target / "bin" / "vsibench-score"), str(results), "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["n"] == 40

    demo = ["--demo", "--demo_dir", str(demo_dirs("qwen2_5_vl")), "--output_dir_base", str(elsewhere / "runs")]
    evaluated = run(str(target / "bin" / "vsibench-eval"), *demo)
    assert evaluated.returncode == 0, evaluated.stderr
    (run_dir,) = (elsewhere / "runs").glob("*/*")
    assert [r["prediction"] for r in read_results(run_dir)] == [r["prediction"] for r in read_results(results.parent)]
