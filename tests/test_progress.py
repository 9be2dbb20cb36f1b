"""The run's progress: counted from the shard files' complete lines, one live bar on a terminal, plain lines in
a file (a SLURM .out), the workers' detail in the log."""

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vsibench_eval.running.progress import RunProgress, ShardProgress, progress_line

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"progress: (\d+)/(\d+) questions \(\d+%\), [\d.]+ questions/s, ETA (?:[\d:]+|unknown), (\d+) failed")


def record(qid: int, error: str | None = None) -> str:
    return json.dumps({"id": qid, "prediction": "A", "error": error}) + "\n"


def test_progress_line_gives_rate_and_time_left():
    # 100 answered in 50 s: 2 per second; 5130 - 120 left: 2505 s
    assert progress_line(120, 5130, 100, 2, 50.0) == (
        "progress: 120/5130 questions (2%), 2.00 questions/s, ETA 0:41:45, 2 failed"
    )
    assert progress_line(7, 10, 0, 0, 3.0).endswith("0.00 questions/s, ETA unknown, 0 failed")


def test_shard_progress_counts_whole_lines_and_failures_of_every_launch(tmp_path):
    (tmp_path / "shard_0.jsonl").write_text(record(1) + record(2, "video failed: no such file"))  # an earlier launch
    progress = ShardProgress(tmp_path)
    assert progress.poll() == (2, 1)
    with open(tmp_path / "shard_0.jsonl", "a") as shard:
        shard.write(record(3) + record(4, "video failed: no such file") + record(5)[:10])  # a batch being written
    (tmp_path / "shard_1.jsonl").write_text(record(6))
    assert progress.poll() == (5, 2)
    with open(tmp_path / "shard_0.jsonl", "a") as shard:
        shard.write(record(5)[10:] + record(2))  # question 2 answered again (--retry_failed)
    assert progress.poll() == (6, 1)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_bar_then_the_final_count_in_the_log(tmp_path, caplog):
    log = logging.getLogger("progress_test")
    stream = Terminal()
    (tmp_path / "shard_0.jsonl").write_text(record(1) + record(2, "video failed"))  # an earlier launch
    with caplog.at_level(logging.INFO, logger="progress_test"), RunProgress(tmp_path, 10, 2, log, 30, stream) as bar:
        with open(tmp_path / "shard_0.jsonl", "a") as shard:
            shard.write(record(3) + record(4, "generation failed"))
        bar.update()
    assert "\r" in stream.getvalue() and "4/10" in stream.getvalue() and "failed=2" in stream.getvalue()
    messages = [r.message for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("progress: 4/10 questions (40%)")
    assert messages[0].endswith(", 2 failed")


@pytest.mark.e2e
def test_a_run_logged_to_a_file_prints_plain_progress_lines(demo_dirs, tmp_path):
    """Two workers, stderr in a file: the parent's progress lines count both shards, with no cursor movement."""
    demo = demo_dirs("qwen2_5_vl")
    argv = ["eval_qwen.py", "--demo", "--demo_dir", str(demo), "--output_dir_base", str(tmp_path / "runs")]
    argv += ["--num_processes", "2"]
    argv += ["--debug_mode", "--debug_size", "16", "--progress_seconds", "0.5"]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        run = subprocess.run([sys.executable, *argv], stderr=stderr, stdout=subprocess.DEVNULL, cwd=ROOT)
    text = (tmp_path / "stderr.txt").read_text()
    assert run.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text  # no bar redrawn in place, no cursor escapes
    counts = [(int(m[1]), int(m[2]), int(m[3])) for m in LINE.finditer(text)]
    assert counts and counts[-1] == (16, 16, 0)
    assert [done for done, _, _ in counts] == sorted(done for done, _, _ in counts)
    (log_file,) = (tmp_path / "runs").glob("*/*/vsibench_eval_default.log")
    worker_lines = re.findall(r"worker (\d): \S+\.mp4 done; (\d+)/(\d+) questions", log_file.read_text())
    assert {rank for rank, _, _ in worker_lines} == {"0", "1"}
    assert sum(int(total) for rank, done, total in worker_lines if done == total) == 16
    assert " done; " not in text  # the workers' detail goes to the log only
