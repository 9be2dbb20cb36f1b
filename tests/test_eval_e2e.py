"""The evaluator end to end on the demo set: every model family, sharding, outputs, rescoring, bad input."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_results, run_eval

from vsibench_eval.demo import tiny_models
from vsibench_eval.demo.data import DEMO_SCENES
from vsibench_eval.inputs.questions import debug_subset, load_questions
from vsibench_eval.scoring import report
from vsibench_eval.settings.config import EvalConfig, parse_config

ROOT = Path(__file__).resolve().parent.parent
RECORD_KEYS = {
    "id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth", "prompt",
    "prediction", "answer", "score", "frame_indices", "frame_timestamps", "video_duration", "error",
}  # fmt: skip


def default_prompt(question: dict) -> str:
    """Spatial-R1's default prompt, by its published structure: "Question:\n" + question, for multiple choice
    "\nOptions:\n" + one option per line, then "\n" + the official post-prompt."""
    if question["options"] is None:
        return f"Question:\n{question['question']}\nPlease answer the question using a single word or phrase."
    options = "\n".join(question["options"])
    return (
        f"Question:\n{question['question']}\nOptions:\n{options}\n"
        "Answer with the option's letter from the given choices directly."
    )


# Two of the demo's prompts, written out by hand.
HAND_WRITTEN_PROMPTS = {
    0: "Question:\nHow many toilet(s) are in this room?\nPlease answer the question using a single word or phrase.",
    6: "Question:\nIf I am standing by the toilet and facing the trash can, is the chair to the left or the right of "
    "the trash can?\nOptions:\nA. Right\nB. Left\nAnswer with the option's letter from the given choices directly.",
}


# The later families run on a seeded half of the demo set (every video keeps some questions), to keep the suite short.
HALF = ("--debug_mode", "true", "--debug_size", "20", "--seed", "0")
FAMILY_RUN = {"qwen2_vl": (), "qwen2_5_vl": (), "qwen3_vl": ()}


@pytest.mark.e2e
@pytest.mark.parametrize("family", tiny_models.FAMILIES)
def test_each_family_runs_end_to_end(family, demo_dirs, demo_run):
    extra = FAMILY_RUN.get(family, HALF)
    run_dir = demo_run(family, *extra)
    questions = load_questions(str(demo_dirs(family) / "vsibench" / "test.parquet"), "unused")
    if extra:
        questions = debug_subset(questions, 20, 0)
        assert {q["scene_name"] for q in questions} == {scene for _, scene, *_ in DEMO_SCENES}
    records = read_results(run_dir)
    assert [r["id"] for r in records] == [q["id"] for q in questions]  # one line per question, sorted by id
    for record, question in zip(records, questions, strict=True):
        assert RECORD_KEYS <= set(record)
        assert record["error"] is None
        assert record["prompt"] == default_prompt(question)
        assert record["prediction"] and 0.0 <= record["score"] <= 1.0 and 0.0 <= record["score_lenient"] <= 1.0
        assert len(record["frame_indices"]) == len(record["frame_timestamps"]) >= 1
        assert record["frame_indices"] == sorted(record["frame_indices"])
    if not extra:
        prompts = {record["id"]: record["prompt"] for record in records}
        assert {qid: prompts[qid] for qid in HAND_WRITTEN_PROMPTS} == HAND_WRITTEN_PROMPTS
    # fps 1 caps short videos; a video longer than 32 s gets the full 32 frames
    counts = {r["scene_name"]: (len(r["frame_indices"]), r["video_duration"]) for r in records}
    for frames, duration in counts.values():
        assert frames == min(32, int(duration))
    assert {"config.json", "summary.json", "vsibench_eval_default.log"} <= {p.name for p in run_dir.iterdir()}


@pytest.mark.e2e
def test_rescoring_the_results_file_matches_log_and_summary(demo_run, capsys):
    run_dir = demo_run("qwen2_5_vl")
    results = run_dir / "vsibench_results_default.jsonl"
    assert report.main([str(results), "--json"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {k: summary[k] for k in rescored} == rescored
    assert rescored["n"] == 40 and rescored["failed"] == 0 and len(rescored["tasks"]) == 8
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert report.main([str(results)]) == 0  # the default report: the table the log shows
    assert capsys.readouterr().out.strip() in log
    assert "Overall (micro)" in log and "95% CI" in log and "overall with the lenient parser" in log
    assert summary["lenient"]["parser"] == "lenient" and summary["ci"]["overall"][0] <= summary["overall"]
    for needle in (
        '"transformers": "5.',
        "attention sdpa",
        "dtype float32",
        "questions/s",
        "M-RoPE positions published",
    ):
        assert needle in log
    assert summary["settings"]["attention"] == ["sdpa"] and summary["versions"]["torch"]


@pytest.mark.e2e
def test_two_workers_give_exactly_the_results_of_one(demo_run):
    one = read_results(demo_run("qwen2_5_vl"))
    two_dir = demo_run("qwen2_5_vl", "--num_processes", "2")
    assert len(list((two_dir / "shards").glob("shard_*.jsonl"))) == 2
    assert read_results(two_dir) == one


@pytest.mark.e2e
def test_debug_subset_runs_the_seeded_questions(demo_dirs, demo_run):
    run_dir = demo_run("qwen2_5_vl", "--debug_mode", "true", "--debug_size", "6", "--seed", "3")
    questions = load_questions(str(demo_dirs("qwen2_5_vl") / "vsibench" / "test.parquet"), "unused")
    assert [r["id"] for r in read_results(run_dir)] == [q["id"] for q in debug_subset(questions, 6, 3)]


@pytest.mark.e2e
def test_missing_video_scores_zero_and_is_counted(demo_dirs, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(demo_dirs("qwen2_5_vl"), demo)
    victim = sorted((demo / "vsibench" / "scannet").glob("*.mp4"))[0]
    victim.unlink()
    argv = ["--demo", "--demo_dir", str(demo), "--output_dir_base", str(tmp_path / "runs")]
    status, run_dir = run_eval([*argv, "--debug_mode", "true", "--debug_size", "40"])
    assert status == 0
    records = read_results(run_dir)
    failed = [r for r in records if r["error"]]
    assert len(records) == 40 and len(failed) == 10
    assert all(r["scene_name"] == victim.stem and "video file not found" in r["error"] for r in failed)
    assert all(r["score"] == 0.0 and r["prediction"] == "" for r in failed)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed"] == 10 and summary["failed_videos"] == [f"scannet/{victim.stem}"] and summary["n"] == 40


def test_cli_overrides_any_field():
    defaults = EvalConfig(num_frames=32, prompt_type="default")
    argv = ["--num_frames", "8", "--target_resolution", "224", "336", "--debug_mode", "--prompt_type", "thinking"]
    config, given = parse_config(defaults, argv)
    assert config.num_frames == 8 and config.target_resolution == [224, 336]
    assert config.debug_mode is True and config.prompt_type == "thinking"
    assert config.batch_size == defaults.batch_size
    assert given == {"num_frames", "target_resolution", "debug_mode", "prompt_type"}


@pytest.mark.e2e
def test_bad_data_file_exits_2_before_loading_a_model(demo_dirs, tmp_path):
    demo = demo_dirs("qwen2_5_vl")
    argv = [sys.executable, "eval_qwen.py", "--model_name", str(demo / "model"), "--video_dir", str(demo / "vsibench")]
    missing = subprocess.run(
        [*argv, "--parquet_file", str(tmp_path / "nope.parquet")], capture_output=True, text=True, cwd=ROOT
    )
    assert missing.returncode == 2 and "nope.parquet: data file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    not_a_model = subprocess.run(
        [*argv[:3], str(tmp_path), *argv[4:], "--parquet_file", str(demo / "vsibench" / "test.parquet")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert not_a_model.returncode == 2 and "no config.json" in not_a_model.stderr


@pytest.mark.e2e
def test_position_rule_is_logged_recorded_and_changes_generations(demo_run):
    published_dir = demo_run("qwen2_5_vl")
    library_dir = demo_run("qwen2_5_vl", "--mrope_positions", "transformers")
    log = (published_dir / "vsibench_eval_default.log").read_text()
    # the demo's videos span more time than space, where transformers 5.x and the published rule disagree
    assert "positions on the run's first prompt (id 0): transformers' M-RoPE positions differ" in log
    published, library = read_results(published_dir), read_results(library_dir)
    assert [r["id"] for r in published] == [r["id"] for r in library]
    assert any(a["prediction"] != b["prediction"] for a, b in zip(published, library, strict=True))
    for run_dir, rule in ((published_dir, "published"), (library_dir, "transformers")):
        settings = json.loads((run_dir / "summary.json").read_text())["settings"]
        assert settings["mrope_positions"] == rule and settings["position_fps"] == "2.0"


@pytest.mark.e2e
def test_a_linear_attention_family_gives_the_same_run_with_and_without_the_shared_prefix(demo_run):
    # Qwen3.5's run here; test_generation compares the two paths for every family at batch sizes 1 and 4.
    shared_dir, plain_dir = demo_run("qwen3_5", *HALF), demo_run("qwen3_5", *HALF, "--shared_prefix", "false")
    assert read_results(shared_dir) == read_results(plain_dir)
    log = (shared_dir / "vsibench_eval_default.log").read_text()
    assert "shared prefix off" not in log
    assert "M-RoPE positions agree with the published rule" in log


@pytest.mark.e2e
def test_shared_prefix_and_plain_paths_give_the_same_run(demo_run):
    shared_dir, plain_dir = demo_run("qwen2_5_vl"), demo_run("qwen2_5_vl", "--shared_prefix", "false")
    assert read_results(shared_dir) == read_results(plain_dir)
    workers = [json.loads((d / "shards" / "worker_0.json").read_text()) for d in (shared_dir, plain_dir)]
    # each video's tokens are prefilled once, not once per question (the demo's videos are short: 8 to 32 frames)
    assert workers[0]["prefill_tokens"] * 2 < workers[1]["prefill_tokens"]
    log = (shared_dir / "vsibench_eval_default.log").read_text()
    assert re.search(r"video_decoding [\d.]+s, vision_encoder [\d.]+s, prefill [\d.]+s, generation [\d.]+s", log)
