"""Worker processes and the program that starts them: a main script the workers cannot import again (read from
standard input, or starting the run outside `if __name__ == "__main__":`) is refused before the run starts, a
notebook's or `python -c`'s main is not; a worker that dies, even in multiprocessing's bootstrap before any of
our code runs, leaves its reason (the end of its traceback) in the run's log and summary.json."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from helpers import run_eval

from vsibench_eval.running.spawning import WorkerStderr, stderr_tail

ROOT = Path(__file__).resolve().parent.parent
CHECK = "from vsibench_eval.running.spawning import main_script_problem\n"


def problem_as_main(monkeypatch, source: str, file: str | None, spec_name: str | None = None):
    """Run `source` as this process's __main__ (with __file__ `file`, or none as in a notebook) and return the
    `problem` it computed with main_script_problem()."""
    main = types.ModuleType("__main__")
    if file is not None:
        main.__file__ = file
    main.__spec__ = types.SimpleNamespace(name=spec_name, origin=file) if spec_name else None
    monkeypatch.setitem(sys.modules, "__main__", main)
    exec(compile(source, file or "<string>", "exec"), main.__dict__)
    return main.problem


UNGUARDED = CHECK + "problem = main_script_problem()\n"
GUARDED = CHECK + textwrap.dedent(
    """
    def run():
        return main_script_problem()

    if __name__ == "__main__":
        problem = run()
    """
)


def test_a_script_starting_the_run_outside_the_main_guard_is_named_with_its_line(monkeypatch, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(UNGUARDED)
    problem = problem_as_main(monkeypatch, UNGUARDED, str(script))
    assert problem.startswith(f'{script}: line 2: the run starts outside `if __name__ == "__main__":`')
    assert "put the call under that guard" in problem
    module = script.with_name("module_run.py")  # python -m module_run: imported again by name, the same
    module.write_text(UNGUARDED)
    assert problem_as_main(monkeypatch, UNGUARDED, str(module), spec_name="module_run").startswith(f"{module}: line 2")


def test_main_refuses_an_unguarded_call_with_exit_2(monkeypatch, tmp_path, capsys):
    source = "import eval_qwen\nproblem = eval_qwen.main(eval_qwen.EvalConfig(), ['--model_name', 'nowhere'])\n"
    script = tmp_path / "run.py"
    script.write_text(source)
    assert problem_as_main(monkeypatch, source, str(script)) == 2
    assert capsys.readouterr().err.startswith(f"error: {script}: line 2: the run starts outside")


def test_a_guarded_script_a_notebook_and_a_package_main_start_workers(monkeypatch, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(GUARDED)
    assert problem_as_main(monkeypatch, GUARDED, str(script)) is None
    # a notebook (or python -c) has no main file: spawn imports nothing of it, even with the call unguarded
    assert problem_as_main(monkeypatch, UNGUARDED, None) is None
    # python -m pkg runs pkg/__main__.py, which spawn never imports again
    package_main = tmp_path / "__main__.py"
    package_main.write_text(UNGUARDED)
    assert problem_as_main(monkeypatch, UNGUARDED, str(package_main), spec_name="pkg.__main__") is None
    # a compiled script (python train.pyc) cannot be told guarded or not: spawn is given its chance
    compiled = tmp_path / "train.pyc"
    compiled.write_bytes(b"\x00\x01 bytecode")
    assert problem_as_main(monkeypatch, UNGUARDED, str(compiled)) is None


def test_a_script_from_standard_input_or_deleted_is_refused(monkeypatch, tmp_path):
    problem = problem_as_main(monkeypatch, GUARDED, "<stdin>")
    assert problem.startswith("this script was read from standard input (python - or a pipe)")
    assert "save it to a file and run that file" in problem
    gone = tmp_path / "gone.py"
    problem = problem_as_main(monkeypatch, GUARDED, str(gone))
    assert problem.startswith(f"{gone}: every worker process imports the main script") and "No such file" in problem


def test_stderr_tail_keeps_the_last_traceback_from_its_last_frame():
    text = textwrap.dedent(
        """\
        a warning from earlier
        Traceback (most recent call last):
          File "a.py", line 1, in <module>
        ValueError: first
        Traceback (most recent call last):
          File "b.py", line 3, in <module>
            run()
          File "b.py", line 2, in run
            raise RuntimeError("second")
        RuntimeError: second

        """
    )
    assert stderr_tail(text) == '  File "b.py", line 2, in run\n    raise RuntimeError("second")\nRuntimeError: second'
    assert stderr_tail("one\ntwo\n") == "one\ntwo"
    assert stderr_tail("a warning\n", only_errors=True) == ""
    fatal = "warn\nFatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n"
    assert (
        stderr_tail(fatal, only_errors=True)
        == "Fatal Python error: Segmentation fault\nCurrent thread 0x1 (most recent call first):"
    )


@pytest.mark.parametrize("writable", [True, False], ids=["file", "no-file"])
def test_worker_stderr_reaches_the_terminal_the_file_and_the_reason_even_when_the_file_cannot_be_written(
    tmp_path, capsys, writable
):
    path = (tmp_path if writable else tmp_path / "absent") / "worker_0.stderr"
    stderr = WorkerStderr(path)
    with stderr.given_to_children():  # a child started here writes to the pipe from its first instruction
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('bo\u00e9m\\n' * 3)"])
    os.write(2, b"the launcher's own stderr\n")  # fd 2 is the launcher's again after the start
    child.wait()
    assert stderr.text() == "bo\u00e9m\n" * 3
    assert capsys.readouterr().err.count("bo\u00e9m\n") == 3  # copied to this process's stderr
    assert path.read_text() == "bo\u00e9m\n" * 3 if writable else not path.exists()


def run_script(path: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-"] if stdin is not None else [sys.executable, str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, cwd=path.parent, timeout=300)


def evaluate_script(demo: Path, out: Path, call: str) -> str:
    """A user's script calling evaluate() on the demo data; `call` places the call (its indentation included)."""
    keywords = (
        f"model_name={str(demo / 'model')!r}, parquet_file={str(demo / 'vsibench' / 'test.parquet')!r}, "
        f"video_dir={str(demo / 'vsibench')!r}, output_dir_base={str(out)!r}, num_processes=2, max_new_tokens=4, "
        "question_types=['object_counting']"
    )
    return "from vsibench_eval import DataError, RunFailed, evaluate\n" + call.format(keywords=keywords)


@pytest.mark.parametrize("from_stdin", [False, True], ids=["unguarded-file", "stdin"])
def test_evaluate_refuses_a_script_its_workers_cannot_import_before_the_run(demo_dirs, tmp_path, from_stdin):
    script = tmp_path / "unguarded.py"
    script.write_text(evaluate_script(demo_dirs("qwen2_5_vl"), tmp_path / "out", "evaluate({keywords})\n"))
    done = run_script(script, stdin=script.read_text() if from_stdin else None)
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("vsibench_eval.errors.DataError: ")
    expected = "this script was read from standard input" if from_stdin else f"{script}: line 2: the run starts outside"
    assert expected in error
    assert error.endswith(", or pass model= and processor= to answer in this process")
    assert not (tmp_path / "out").exists()  # refused before the run started: no run directory, no worker


@pytest.mark.e2e
def test_a_worker_dying_in_multiprocessings_bootstrap_leaves_its_reason_in_log_and_summary(demo_dirs, tmp_path):
    script = tmp_path / "refuses_import.py"
    call = """
if __name__ != "__main__":  # as a worker imports it again: the worker dies before any evaluator code runs
    raise RuntimeError("this script refuses to be imported by a worker")
if __name__ == "__main__":
    try:
        evaluate({keywords})
    except RunFailed as failed:
        print("run_dir", failed.run_dir)
"""
    script.write_text(evaluate_script(demo_dirs("qwen2_5_vl"), tmp_path / "out", call))
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.split("run_dir ")[1].strip())

    reason = (
        "exited with status 1; the end of its standard error (shards/worker_{rank}.stderr):\n"
        f'  File "{script}", line 4, in <module>\n'
        '    raise RuntimeError("this script refuses to be imported by a worker")\n'
        "RuntimeError: this script refuses to be imported by a worker"
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_workers"] == {str(rank): reason.format(rank=rank) for rank in (0, 1)}
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert all(f"worker {rank} {reason.format(rank=rank)}" in log for rank in (0, 1))
    assert "RuntimeError: this script refuses to be imported by a worker" in done.stderr  # relayed to the terminal
    assert "spawn_main" in (run_dir / "shards" / "worker_0.stderr").read_text()  # the whole traceback is kept


@pytest.mark.e2e
def test_a_worker_failing_in_our_code_leaves_its_traceback_in_log_and_summary(demo_dirs, tmp_path):
    demo = demo_dirs("qwen2_5_vl")
    model = tmp_path / "broken_model"
    shutil.copytree(demo / "model", model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    data = ["--parquet_file", str(demo / "vsibench" / "test.parquet"), "--video_dir", str(demo / "vsibench")]
    argv = ["--model_name", str(model), *data, "--num_processes", "1", "--question_types", "object_counting"]
    status, run_dir = run_eval([*argv, "--output_dir_base", str(tmp_path / "out")])

    assert status == 1
    reason = json.loads((run_dir / "summary.json").read_text())["failed_workers"]["0"]
    head = "exited with status 1; the end of its standard error (shards/worker_0.stderr):\n"
    assert reason.startswith(head + '  File "')
    last_line = reason.splitlines()[-1]
    assert "safetensors" in reason.lower() and last_line.split(":")[0].endswith("Error")
    assert f"worker 0 {reason}" in (run_dir / "vsibench_eval_default.log").read_text()
