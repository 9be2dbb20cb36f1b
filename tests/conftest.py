"""Shared fixtures: demo assets built once per test session, and demo runs cached per family and flags."""

import os
import shutil
from pathlib import Path

import pytest
from helpers import run_eval

from vsibench_eval.demo.assets import ensure_demo


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory):
    """Demo assets (tiny checkpoint + synthetic VSI-Bench set) per model family, built on first use; the data
    set is built once and copied. Kept across test sessions under $EVAL_QWEN_TEST_DEMO_DIR when it is set
    (`make mutation` runs pytest per mutant). Every test that needs a family's tiny checkpoint uses its model/."""
    built = {}
    keep = os.environ.get("EVAL_QWEN_TEST_DEMO_DIR")

    def get(family: str) -> Path:
        if family not in built:
            demo = Path(keep, family) if keep else tmp_path_factory.mktemp(f"demo_{family}")
            if built and not (demo / "vsibench").exists():  # another family's data set: the same files
                shutil.copytree(next(iter(built.values())) / "vsibench", demo / "vsibench")
            ensure_demo(demo, family=family, trained=False)  # random weights: answers depend on every input
            built[family] = demo
        return built[family]

    return get


@pytest.fixture(scope="session")
def demo_run(demo_dirs, tmp_path_factory):
    """Demo runs, cached per (family, extra flags)."""
    runs = {}

    def get(family: str, *extra: str) -> Path:
        key = (family, *extra)
        if key not in runs:
            out = tmp_path_factory.mktemp("runs")
            argv = ["--demo", "--demo_dir", str(demo_dirs(family)), "--demo_family", family, "--output_dir_base"]
            status, run_dir = run_eval([*argv, str(out), *extra])
            assert status == 0, f"run {key} exited {status}"
            runs[key] = run_dir
        return runs[key]

    return get
