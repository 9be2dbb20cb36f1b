"""Shared fixtures: demo assets built once per test session, and a runner for eval_qwen.main."""

import json
import os
import shutil
from pathlib import Path

import pytest

import eval_qwen
from config import EvalConfig
from demo_assets import ensure_demo
from generation import chat_text
from prompts import build_prompt
from protocols import apply_protocol
from qwen_vl_utils import load_video
from util import group_by_video, load_questions


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


def settled_config(**fields) -> EvalConfig:
    """An EvalConfig as a run uses it: protocol none applied for a Qwen2.5-VL model, so every setting is set."""
    config = EvalConfig(protocol="none", **fields)
    apply_protocol(config, "qwen2_5_vl")
    return config


def video_and_texts(demo, processor, video_number: int) -> tuple:
    """A demo video's frames (32, at most 1 per second, within 448x448) and its questions as chat texts: the
    official prompt for odd video numbers, the thinking prompt for even ones."""
    questions = load_questions(str(demo / "vsibench" / "test.parquet"), str(demo / "vsibench"))
    path, video_questions = list(group_by_video(questions).items())[video_number]
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    video = load_video(path, 32, 1.0, (448, 448), factor)
    prompt_type = "official" if video_number % 2 else "thinking"
    return video, [chat_text(processor, build_prompt(q, prompt_type)) for q in video_questions]


def run_eval(argv: list[str]) -> tuple[int, Path | None]:
    """Run the evaluator as `python eval_qwen.py ARGV` would; returns the exit status and the new run dir."""
    out = Path(argv[argv.index("--output_dir_base") + 1])
    before = set(out.glob("*/*")) if out.exists() else set()
    status = eval_qwen.main(eval_qwen.EvalConfig(), argv)
    created = sorted(set(out.glob("*/*")) - before) if out.exists() else []
    return status, (created[-1] if created else None)


def read_results(run_dir: Path, prompt_type: str = "default") -> list[dict]:
    path = run_dir / f"vsibench_results_{prompt_type}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


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
