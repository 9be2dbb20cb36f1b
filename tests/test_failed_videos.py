"""A video is the only thing a bad video can take down: its questions are recorded as failed, the worker goes on,
and --resume --retry_failed answers them again once the video is fixed."""

import json
import shutil

import numpy as np
import pytest
from helpers import read_results, run_eval, settled_config

import eval_qwen
from vsibench_eval.demo.data import write_video
from vsibench_eval.inputs.frames import FrameRules, VideoError, load_video
from vsibench_eval.running.video_prep import decoded_videos
from vsibench_eval.settings.config import EvalConfig

LMMS_EVAL = ("--protocol", "lmms_eval", "--num_processes", "2")  # its smart_resize refuses an aspect ratio over 200


def test_a_frame_shape_no_resize_rule_takes_is_a_video_error_naming_the_file(tmp_path):
    path = tmp_path / "wide.mp4"
    write_video(path, np.full((4, 16, 4000, 3), 128, dtype=np.uint8), fps=4)
    with pytest.raises(VideoError, match=f"{path}: cannot resize its 4000x16 frames \\(ValueError: .*aspect ratio"):
        load_video(str(path), 4, 0.0, (448, 448), 28, FrameRules(resize="smart_resize"))


def test_a_video_that_fails_is_reported_and_the_next_one_decodes(tmp_path):
    good, wide = tmp_path / "good.mp4", tmp_path / "wide.mp4"
    write_video(good, np.full((4, 64, 64, 3), 128, dtype=np.uint8), fps=4)
    write_video(wide, np.full((4, 16, 4000, 3), 128, dtype=np.uint8), fps=4)
    config = settled_config(resize="smart_resize", num_frames=4, fps=0.0)
    decoded = list(decoded_videos([str(wide), str(good), str(wide)], config, 28))
    assert [d.video is None for d in decoded] == [True, False, True]
    assert decoded[0].error.startswith(f"video failed: {wide}: cannot resize its 4000x16 frames (ValueError")
    assert decoded[1].error is None and decoded[1].video.frames.shape[0] == 4


@pytest.mark.e2e
def test_a_video_no_resize_rule_takes_is_one_failure_and_retry_failed_answers_it_again(demo_dirs, demo_run, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(demo_dirs("qwen2_5_vl"), demo)
    victim = demo / "vsibench" / "scannetpp" / "0a5c013435.mp4"
    original = victim.read_bytes()
    write_video(victim, np.full((8, 16, 4000, 3), 128, dtype=np.uint8), fps=4)  # 4000 wide, 16 high
    argv = ["--demo", "--demo_dir", str(demo), "--output_dir_base", str(tmp_path / "runs"), *LMMS_EVAL]
    status, run_dir = run_eval(argv)
    assert status == 0  # complete: every question has a record, the failed ones scored 0

    reference = read_results(demo_run("qwen2_5_vl", *LMMS_EVAL))
    records = read_results(run_dir)
    failed = [r for r in records if r["error"]]
    assert len(records) == 40 and {r["scene_name"] for r in failed} == {"0a5c013435"} and len(failed) == 10
    assert all("0a5c013435.mp4: cannot resize its 4000x16 frames (ValueError" in r["error"] for r in failed)
    assert all(r["score"] == 0.0 and r["prediction"] == "" for r in failed)
    assert [r for r in records if not r["error"]] == [r for r in reference if r["scene_name"] != "0a5c013435"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_videos"] == ["scannetpp/0a5c013435"] and summary["failed"] == 10 and summary["complete"]

    # a plain resume has nothing left to do; with --retry_failed the fixed video's questions are answered again
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 0
    assert read_results(run_dir) == records
    victim.write_bytes(original)
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir), "--retry_failed"]) == 0
    assert read_results(run_dir) == reference
    ids = [json.loads(line)["id"] for shard in (run_dir / "shards").glob("shard_*.jsonl") for line in shard.open()]
    assert sorted(ids) == [r["id"] for r in reference]  # each question once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_videos"] == [] and summary["failed"] == 0 and summary["complete"]
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert "retry_failed: 10 questions recorded as failed are answered again" in log
