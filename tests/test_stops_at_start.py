"""Stop signals outside the workers' run: while a run starts (before and after its run directory is made), SLURM's
SIGUSR1, and evaluate() called from a thread other than the main one (which alone can set signal handlers)."""

import os
import shlex
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import read_results

import eval_qwen
from vsibench_eval.running import launch
from vsibench_eval.settings.config import EvalConfig


def stop_here(signum: int, step):
    """`step`, made to receive `signum` first, as a signal arriving during that step of the start would."""

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises long before
        return step(*args, **kwargs)

    return stopped


def demo_argv(demo: Path, *extra: str) -> list[str]:
    return [
        "--demo",
        "--demo_dir",
        str(demo),
        "--protocol",
        "none",
        "--debug_mode",
        "true",
        "--debug_size",
        "4",
        *extra,
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1], ids=["ctrl-c", "sigusr1"])
def test_a_stop_while_preparing_writes_nothing(demo_dirs, tmp_path, capsys, monkeypatch, signum):
    monkeypatch.setattr(launch, "prepare", stop_here(signum, launch.prepare))
    argv = demo_argv(demo_dirs("qwen2_5_vl"), "--output_dir_base", str(tmp_path / "runs"))
    assert eval_qwen.main(EvalConfig(), argv) == 128 + signum
    err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(signum).name} while starting; nothing was written" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # the handlers are given back


@pytest.mark.e2e
def test_a_stop_once_the_run_directory_exists_prints_the_resume_command(demo_dirs, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "Bob's run"  # the printed command pastes into a shell as it is
    monkeypatch.setattr(launch, "answered_ids", stop_here(signal.SIGUSR1, launch.answered_ids))
    assert eval_qwen.main(EvalConfig(), demo_argv(demo_dirs("qwen2_5_vl"), "--run_dir", str(run_dir))) == 138
    err = capsys.readouterr().err
    assert "interrupted by SIGUSR1; finished batches are kept. Resume with:\n  python eval_qwen.py --resume " in err
    assert shlex.split(err.split("Resume with:\n")[1].splitlines()[0]) == [
        "python",
        "eval_qwen.py",
        "--resume",
        str(run_dir),
    ]
    assert (run_dir / "config.json").is_file() and "Traceback" not in err
    monkeypatch.undo()
    monkeypatch.setattr(launch, "prepare", stop_here(signal.SIGINT, launch.prepare))  # the resume, stopped at once
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 130
    assert (
        f"while starting; nothing was written. Resume with:\n  python eval_qwen.py --resume {shlex.quote(str(run_dir))}"
        in (capsys.readouterr().err)
    )
    monkeypatch.undo()
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 0  # the hint's command finishes the run
    assert len(read_results(run_dir)) == 4


@pytest.mark.e2e
def test_evaluate_from_another_thread(demo_dirs, tmp_path):
    demo = demo_dirs("qwen2_5_vl")
    paths = {"parquet_file": str(demo / "vsibench" / "test.parquet"), "video_dir": str(demo / "vsibench")}
    settings = {"debug_mode": True, "debug_size": 4, "num_processes": 1, "output_dir_base": str(tmp_path)}
    outcome = []

    def evaluate():
        try:
            outcome.append(eval_qwen.evaluate(model_name=str(demo / "model"), **paths, **settings))
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=evaluate)
    thread.start()
    thread.join()
    assert isinstance(outcome[0], dict), outcome[0]
    assert outcome[0]["complete"] and outcome[0]["n"] == 4
