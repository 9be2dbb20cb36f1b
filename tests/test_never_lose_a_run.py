"""Faults on the demo set: killed workers and parents, stop signals, locks, full and read-only disks, torn shard
lines, resume, out-of-memory batches, bad input.

The fault tests decide when a worker dies: with EVAL_QWEN_PAUSE_DIR set, each worker pauses after its first
flushed batch (stopping.pause_after_first_flush) until the test has done its damage and releases it.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import SMALL, read_results, run_eval, settled_config

import eval_qwen
from vsibench_eval.run_dir.directory import finish_run, make_run_dir
from vsibench_eval.run_dir.files import ShardFile, WriteError, atomic_write
from vsibench_eval.running.answering import answer_batch
from vsibench_eval.running.stopping import PAUSE_DIR
from vsibench_eval.settings.config import EvalConfig

ROOT = Path(__file__).resolve().parent.parent


class PausedRun:
    """`python eval_qwen.py --demo ... --run_dir RUN_DIR` in its own process group, its output in files; each
    worker pauses after its first flushed batch until release()."""

    def __init__(self, demo: Path, run_dir: Path, tmp_path: Path, *extra: str):
        self.run_dir, self.pause_dir = run_dir, tmp_path / "pause"
        self.pause_dir.mkdir()
        self.argv = ["--demo", "--demo_dir", str(demo), "--run_dir", str(run_dir), *SMALL, *extra]
        self.argv += ["--protocol", "none"]  # the in-process reference runs use EvalConfig()'s protocol, not __main__'s
        self.output = open(tmp_path / "stderr.txt", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "eval_qwen.py", *self.argv],
            cwd=ROOT,
            env=os.environ | {PAUSE_DIR: str(self.pause_dir)},
            stdout=subprocess.DEVNULL,
            stderr=self.output,
            start_new_session=True,  # its own process group, as a terminal job would be
        )

    def paused_workers(self, ranks=(0, 1), timeout: float = 300.0) -> list[int]:
        """The pids of the workers `ranks`, once each has flushed its first batch and paused."""
        markers = [self.pause_dir / f"flushed_{rank}" for rank in ranks]
        deadline = time.monotonic() + timeout
        while not all(marker.exists() for marker in markers):
            assert self.process.poll() is None, f"the run ended early: {self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, "the workers did not flush a batch in time"
            time.sleep(0.05)
        return [int(marker.read_text()) for marker in markers]

    def release(self) -> None:
        (self.pause_dir / "go").touch()

    def wait(self, timeout: float = 300.0) -> tuple[int, str]:
        return self.process.wait(timeout), self.stderr()

    def stderr(self) -> str:
        self.output.flush()
        return Path(self.output.name).read_text()

    def kill(self) -> None:
        """Cleanup: whatever is left of the run's process group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.output.close()


@pytest.fixture
def paused_run(demo_dirs, tmp_path):
    runs = []

    def start(run_dir: Path, *extra: str) -> PausedRun:
        runs.append(PausedRun(demo_dirs("qwen2_5_vl"), run_dir, tmp_path, *extra))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


@pytest.fixture
def small_reference(demo_run):
    return read_results(demo_run("qwen2_5_vl", *SMALL))


def is_running(pid: int) -> bool:
    """Does process `pid` exist and is not a zombie?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(is_running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[pid for pid in pids if is_running(pid)]}"
        time.sleep(0.05)


def shard_ids(run_dir: Path) -> list[int]:
    return [json.loads(line)["id"] for p in (run_dir / "shards").glob("shard_*.jsonl") for line in p.open()]


def resume(run_dir: Path, *extra: str) -> int:
    return eval_qwen.main(EvalConfig(), ["--resume", str(run_dir), *extra])


def assert_resumes_to(run_dir: Path, reference: list[dict], *extra: str) -> None:
    """Resuming finishes the run: the results of an uninterrupted run, no id written twice."""
    assert resume(run_dir, *extra) == 0
    assert read_results(run_dir) == reference
    ids = shard_ids(run_dir)
    assert sorted(ids) == sorted(set(ids)) == [r["id"] for r in reference]
    assert json.loads((run_dir / "summary.json").read_text())["complete"] is True


@pytest.mark.e2e
def test_sigkilled_worker_then_resume_gives_the_uninterrupted_results(paused_run, small_reference, tmp_path, capsys):
    run = paused_run(tmp_path / "run", "--num_processes", "2")
    worker_0, _ = run.paused_workers()

    # while the run is alive nobody else may run in its directory: a resume, or a new run given the same one
    holder = f"{run.run_dir} is in use by pid {run.process.pid} on {socket.gethostname()} since "
    assert resume(run.run_dir) == 2
    assert holder in capsys.readouterr().err
    assert eval_qwen.main(EvalConfig(), run.argv) == 2
    assert holder in capsys.readouterr().err

    os.kill(worker_0, signal.SIGKILL)
    run.release()
    status, stderr = run.wait()
    assert status == 1
    assert "worker 0 killed by signal SIGKILL" in stderr
    assert f"python eval_qwen.py --resume {run.run_dir}" in stderr
    partial = read_results(run.run_dir)  # what was finished is merged and kept
    assert 0 < len(partial) < len(small_reference)
    assert partial == [r for r in small_reference if r["id"] in {p["id"] for p in partial}]
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["complete"] is False and summary["failed_workers"] == {"0": "killed by signal SIGKILL"}

    # a process killed mid-write leaves a torn last line: it is discarded, not parsed or kept
    with open(run.run_dir / "shards" / "shard_0.jsonl", "a") as shard:
        shard.write('{"id": 0, "dataset": "arkitsc')
    assert_resumes_to(run.run_dir, small_reference)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stop_signals_stop_every_worker_and_keep_finished_batches(paused_run, tmp_path, signum):
    run = paused_run(tmp_path / "run", "--num_processes", "2")
    workers = run.paused_workers()
    if signum == signal.SIGINT:
        os.killpg(run.process.pid, signum)  # what Ctrl-C in a terminal sends: the whole process group
    else:
        os.kill(run.process.pid, signum)  # what SLURM or Kubernetes send: the parent only
    status, stderr = run.wait()

    name = signal.Signals(signum).name
    assert status == 128 + signum
    assert "Traceback" not in stderr
    assert f"interrupted by {name}: stopping the workers" in stderr
    assert f"python eval_qwen.py --resume {run.run_dir}" in stderr
    wait_until_gone(workers, timeout=1.0)  # the parent waited for them
    log = (run.run_dir / "vsibench_eval_default.log").read_text()
    assert f"interrupted by {name}: stopping the workers" in log
    assert all(f"worker {rank}: interrupted by {name}; stopping" in log for rank in (0, 1))
    kept = shard_ids(run.run_dir)
    assert len(kept) >= 4 and len(kept) == len(set(kept))  # each worker's first batch of 2
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["failed_workers"] == {"0": f"interrupted by {name}", "1": f"interrupted by {name}"}


STOP_SIGNAL_SCRIPT = """
import os, signal, sys, time
from vsibench_eval.running.stopping import Interrupted, stop_signals_interrupt
with stop_signals_interrupt():
    try:
        os.kill(os.getpid(), signal.{name})
        time.sleep(5)
    except Interrupted as stop:
        sys.exit(stop.status)
sys.exit(0)
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"])
def test_each_stop_signal_exits_with_the_conventional_status(name):
    script = STOP_SIGNAL_SCRIPT.replace("{name}", name)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.Signals[name].value and not done.stderr


@pytest.mark.e2e
def test_workers_stop_when_the_parent_dies_and_a_requeue_resumes(paused_run, small_reference, tmp_path):
    run = paused_run(tmp_path / "run", "--num_processes", "2")
    workers = run.paused_workers()
    os.kill(run.process.pid, signal.SIGKILL)  # no handler runs: the workers must notice by themselves
    run.process.wait()
    wait_until_gone(workers)
    log = (run.run_dir / "vsibench_eval_default.log").read_text()
    for rank in (0, 1):
        assert f"worker {rank}: its parent process {run.process.pid} is gone; stopping" in log
    # the kernel released the dead run's lock, so the requeued job (the same command, --resume added) runs
    assert_resumes_to(run.run_dir, small_reference, *run.argv)


@pytest.fixture
def mount(tmp_path):
    """mount(*args): run `mount` (needs root); everything mounted is unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("simulating a full or read-only disk needs root, to mount a tmpfs")
    mounted = []

    def run(*args: str, target: Path) -> None:
        done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if done.returncode and not mounted:
            pytest.skip(f"cannot mount here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        mounted.append(target)

    yield run
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill the disk up: a file that grows until the disk is full."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.mark.e2e
def test_a_full_disk_stops_the_run_cleanly_and_resume_finishes(paused_run, small_reference, mount, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", target=disk)
    run = paused_run(disk / "run", "--num_processes", "1")
    run.paused_workers(ranks=(0,))
    filler = fill(disk)
    run.release()
    status, stderr = run.wait()

    assert status == 1 and "Traceback" not in stderr
    full = "No space left on device"
    assert f"worker 0: cannot write {run.run_dir / 'shards' / 'shard_0.jsonl'}: {full}" in stderr
    assert "worker 0 stopped: a write to the run directory failed" in stderr
    assert f"cannot write {run.run_dir / 'vsibench_results_default.jsonl'}: {full}" in stderr
    assert f"python eval_qwen.py --resume {run.run_dir}" in stderr
    assert json.loads((run.run_dir / "config.json").read_text())["run_dir"] == str(run.run_dir)
    assert not (run.run_dir / "vsibench_results_default.jsonl").exists()  # never a partial results file
    assert len(shard_ids(run.run_dir)) >= 2  # the batch flushed before the disk filled up is kept

    filler.unlink()
    assert_resumes_to(run.run_dir, small_reference)


@pytest.mark.e2e
def test_a_disk_full_at_the_start_leaves_nothing_behind(demo_dirs, mount, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=disk)
    (disk / "run").mkdir()
    fill(disk)
    argv = ["--demo", "--demo_dir", str(demo_dirs("qwen2_5_vl")), "--run_dir", str(disk / "run")]
    assert eval_qwen.main(EvalConfig(), argv) == 2
    err = capsys.readouterr().err
    assert f"cannot create the run directory in {disk / 'run'}: " in err and "No space left on device" in err
    assert list((disk / "run").iterdir()) == []  # no 0-byte config.json that a resume could not read


RECORD = {
    "id": 0,
    "dataset": "scannet",
    "scene_name": "scene0011_00",
    "question_type": "object_counting",
    "question": "How many chairs?",
    "options": None,
    "ground_truth": "3",
    "prediction": "3",
    "error": None,
}


@pytest.mark.parametrize("fault", ["read-only", "removed"])
def test_write_errors_name_the_path_and_the_cause(mount, tmp_path, caplog, fault):
    run_dir = tmp_path / "run"
    (run_dir / "shards").mkdir(parents=True)
    atomic_write(run_dir / "config.json", "{}\n")
    shard = ShardFile(run_dir / "shards" / "shard_0.jsonl")
    shard.append([RECORD])
    if fault == "read-only":  # files opened before stay writable; a disk that goes read-only fails them too
        mount("--bind", "-o", "ro", str(run_dir), target=run_dir)
        cause = "Read-only file system"
    else:
        shutil.rmtree(run_dir)
        cause = "No such file or directory"
        with pytest.raises(WriteError, match=f"cannot write {shard.path}: the file has been removed"):
            shard.append([RECORD | {"id": 1}])
    with pytest.raises(WriteError, match=f"cannot write {run_dir / 'config.json'}: {cause}"):
        atomic_write(run_dir / "config.json", '{"num_frames": 8}\n')
    if fault == "read-only":
        assert (run_dir / "config.json").read_text() == "{}\n" and len(list(run_dir.iterdir())) == 2
    status = finish_run(settled_config(), run_dir, [RECORD], set(), {}, 1.0, logging.getLogger("t"), "RESUME COMMAND")
    assert status == 1
    assert f"cannot write {run_dir / 'vsibench_results_default.jsonl'}: {cause}" in caplog.text
    assert "RESUME COMMAND" in caplog.text
    shard.close()


@pytest.mark.e2e
def test_resume_from_a_shard_cut_mid_batch_and_mid_video(demo_run, small_reference, tmp_path):
    # The small run's only shard: video 41069025's questions 0, 1, 2, 6, 8, 9, 10 in batches of two
    # ([0, 1], [2, 6], [8, 9], [10]), then the other videos'. Keep 0, 1, 2: half of the second batch.
    finished = demo_run("qwen2_5_vl", *SMALL)
    run_dir = tmp_path / "run"
    (run_dir / "shards").mkdir(parents=True)
    shutil.copy(finished / "config.json", run_dir / "config.json")
    lines = (finished / "shards" / "shard_0.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(line)["id"] for line in lines[:4]] == [0, 1, 2, 6]
    (run_dir / "shards" / "shard_0.jsonl").write_text("".join(lines[:3]))
    assert_resumes_to(run_dir, small_reference)


@pytest.mark.e2e
def test_resume_accepts_the_saved_values_and_names_real_changes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"num_frames": 32, "fps": 1.0, "video_dir": str(tmp_path / "v")}))
    # the saved values given again (a requeued job) pass: the run goes on to its next check
    argv = ["--resume", str(run_dir), "--num_frames", "32", "--fps", "1", "--num_processes", "3"]
    assert eval_qwen.main(EvalConfig(), argv) == 2
    assert f"video_dir: {tmp_path / 'v'}: no such directory" in capsys.readouterr().err
    argv = ["--resume", str(run_dir), "--num_frames", "8", "--fps", "1", "--batch_size", "4"]
    assert eval_qwen.main(EvalConfig(), argv) == 2
    assert capsys.readouterr().err == (
        f"error: resume: {run_dir}: what is computed cannot change when resuming: "
        "batch_size: 32 in the saved config, 4 given; num_frames: 32 in the saved config, 8 given\n"
    )
    assert eval_qwen.main(EvalConfig(), ["--resume", str(tmp_path / "nothing")]) == 2
    assert "config.json: not found" in capsys.readouterr().err


def test_a_new_run_never_reuses_a_run_directory(tmp_path):
    config = EvalConfig(output_dir_base=str(tmp_path), model_name="/models/ckpt-100/")
    first, second = make_run_dir(config), make_run_dir(config)
    assert first != second and first.parent == second.parent == tmp_path / "ckpt-100"


def test_out_of_memory_batches_are_split_down_to_single_questions():
    calls = []

    def fits_one_at_a_time(prompts):
        calls.append(len(prompts))
        if len(prompts) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [p.upper() for p in prompts]

    assert answer_batch(fits_one_at_a_time, ["a", "b", "c", "d"]) == [(x, None, {}) for x in "ABCD"]
    assert calls == [4, 2, 1, 1, 2, 1, 1]

    def never_fits(prompts):
        raise torch.OutOfMemoryError("CUDA out of memory")

    answers = answer_batch(never_fits, ["a", "b", "c"])
    assert [p for p, _, _ in answers] == ["", "", ""] and all("out of memory" in e for _, e, _ in answers)


def test_a_batch_that_fails_otherwise_is_retried_one_question_at_a_time(caplog):
    calls = []

    def fails_on_a_huge_question(prompts):
        calls.append(len(prompts))
        if "huge" in prompts:
            raise ValueError("the prompt is longer than the model's context")
        return [p.upper() for p in prompts]

    answers = answer_batch(fails_on_a_huge_question, ["a", "huge", "c", "d"])
    error = "generation failed: ValueError: the prompt is longer than the model's context"
    assert answers == [("A", None, {}), ("", error, {}), ("C", None, {}), ("D", None, {})]  # its neighbours keep theirs
    assert calls == [4, 1, 1, 1, 1]
    assert "a batch of 4: " + error + "; answering its questions one at a time" in caplog.text
    assert "Traceback" in caplog.text


GOOD_ROW = {
    "id": 5,
    "dataset": "scannet",
    "scene_name": "scene0011_00",
    "question_type": "object_rel_distance",
    "question": "Which is closest?",
    "ground_truth": "A",
    "options": ["A. tv", "B. bed"],
}


@pytest.mark.e2e
@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{k: v for k, v in GOOD_ROW.items() if k != "options"}], "missing column(s) options"),
        ([GOOD_ROW | {"question_type": "object_colour"}], "row id 5: column 'question_type': unknown question type"),
        ([GOOD_ROW | {"options": None}], "row id 5: column 'options': multiple-choice question without options"),
        (
            [GOOD_ROW | {"question_type": "object_counting", "ground_truth": "many", "options": None}],
            "row id 5: column 'ground_truth': numerical ground truth is not a number",
        ),
        ([GOOD_ROW, GOOD_ROW], "row id 5: column 'id': duplicate id"),
    ],
)
def test_bad_data_files_exit_2_naming_file_row_and_column(demo_dirs, tmp_path, capsys, rows, needle):
    demo = demo_dirs("qwen2_5_vl")
    data_file = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(data_file)
    argv = ["--parquet_file", str(data_file), "--video_dir", str(demo / "vsibench")]
    argv += ["--model_name", str(demo / "model")]
    assert eval_qwen.main(EvalConfig(output_dir_base=str(tmp_path / "runs")), argv) == 2
    err = capsys.readouterr().err
    assert needle in err and str(data_file) in err
    assert not (tmp_path / "runs").exists()  # rejected before a run directory or a model


@pytest.mark.e2e
@pytest.mark.parametrize("problem", ["missing model", "not qwen-vl", "missing video dir"])
def test_bad_paths_exit_2(demo_dirs, tmp_path, capsys, problem):
    demo = demo_dirs("qwen2_5_vl")
    model, video_dir = str(demo / "model"), str(demo / "vsibench")
    if problem == "missing model":
        model, needle = str(tmp_path / "no-such-model"), "no-such-model: no such directory"
    elif problem == "not qwen-vl":
        (tmp_path / "llama").mkdir()
        (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
        model, needle = str(tmp_path / "llama"), "model_type 'llama' is not a Qwen-VL model"
    else:
        video_dir, needle = str(tmp_path / "videos"), "videos: no such directory"
    argv = ["--parquet_file", str(demo / "vsibench" / "test.parquet"), "--video_dir", video_dir, "--model_name", model]
    assert eval_qwen.main(EvalConfig(output_dir_base=str(tmp_path / "runs")), argv) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.e2e
def test_truncated_video_is_recorded_and_the_run_goes_on(demo_dirs, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(demo_dirs("qwen2_5_vl"), demo)
    victim = demo / "vsibench" / "scannetpp" / "0a5c013435.mp4"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a download cut off halfway
    argv = ["--demo", "--demo_dir", str(demo), "--output_dir_base", str(tmp_path / "runs"), "--num_processes", "2"]
    status, run_dir = run_eval(argv)
    assert status == 0
    records = read_results(run_dir)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 40  # nothing lost, nothing twice
    failed = [r for r in records if r["error"]]
    assert {r["scene_name"] for r in failed} == {"0a5c013435"} and len(failed) == 10
    assert all("0a5c013435.mp4: cannot decode video" in r["error"] and r["score"] == 0.0 for r in failed)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_videos"] == ["scannetpp/0a5c013435"] and summary["failed"] == 10 and summary["complete"]
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert "0a5c013435.mp4: cannot decode video" in log and "1 video(s) failed: scannetpp/0a5c013435" in log
