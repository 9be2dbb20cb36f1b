"""What spawned worker processes need from the program that starts them. multiprocessing's spawn imports the
program's main script again in each worker before any of our code runs there, so a script read from standard
input, or one that starts the run outside `if __name__ == "__main__":`, kills every worker at birth
(main_script_problem finds both first). A worker's standard error goes to a file in the run directory
(stderr_to), relayed to this process's terminal (relay_output), so that the reason a worker died, even in
that bootstrap, reaches the run's log and summary (stderr_tail).

Imports only the standard library.
"""

import ast
import contextlib
import os
import sys
from pathlib import Path

ERROR_STARTS = ("Traceback (most recent call last)", "Fatal Python error")  # how Python reports a death on stderr
TAIL_LINES = 12


def main_script_problem() -> str | None:
    """Why worker processes spawned now would die re-importing this program's main script, or None. A
    notebook, the interactive interpreter and `python -c` have no main script (spawn imports none there),
    and a package's __main__ module is not imported again, so those are fine."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return None
    path = spec.origin if spec is not None else getattr(main, "__file__", None)
    if path is None:
        return None
    if path == "<stdin>":
        return (
            "this script was read from standard input (python - or a pipe), which every worker process would "
            "read again when it starts (multiprocessing's spawn imports the main script); save it to a file "
            'and run that file, with the call under `if __name__ == "__main__":`'
        )
    try:
        source = Path(path).read_text()
    except OSError as error:  # a script deleted or moved since it started
        return f"{path}: every worker process imports the main script when it starts, but it cannot be read: {error}"
    line = main_module_line(main.__dict__)
    if line is not None and not under_name_test(source, line):
        return (
            f'{path}: line {line}: the run starts outside `if __name__ == "__main__":`; every worker process '
            "imports this script again when it starts (multiprocessing's spawn) and would start the run again; "
            "put the call under that guard"
        )
    return None


def main_module_line(main_globals: dict) -> int | None:
    """The line the main script's top level is running now (the call that led here), or None when this
    thread did not start from it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main_globals and frame.f_code.co_name == "<module>":
            return frame.f_lineno
        frame = frame.f_back
    return None


def under_name_test(source: str, line: int) -> bool:
    """Is `line` inside an `if` that tests __name__ (`if __name__ == "__main__":`, however spelled)?"""
    return any(
        node.lineno <= line <= node.end_lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.If) and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))
    )


@contextlib.contextmanager
def stderr_to(path: Path):
    """Inside this block, processes started by this one write their standard error to `path` (a new file)
    from their first instruction on. This process's own standard error points there too meanwhile, so the
    block holds only a process's start."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as file:
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def relay_output(path: Path, offset: int) -> int:
    """Write what `path` gained since `offset` to this process's standard error; returns the new offset."""
    with open(path, "rb") as file:
        file.seek(offset)
        new = file.read()
    if new:
        sys.stderr.write(new.decode(errors="replace"))
        sys.stderr.flush()
    return offset + len(new)


def stderr_tail(text: str, only_errors: bool = False) -> str:
    """What a worker's standard error says about its death: its last traceback from the last frame on (where
    it was and the error), or its last fatal error; else its last lines (none when `only_errors`). At most
    TAIL_LINES non-blank lines."""
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [number for number, line in enumerate(lines) if line.startswith(ERROR_STARTS)]
    if not starts:
        return "" if only_errors else "\n".join(lines[-TAIL_LINES:])
    error = lines[starts[-1] :]
    frames = [number for number, line in enumerate(error) if line.startswith('  File "')]
    if error[0].startswith("Traceback") and frames:
        error = error[frames[-1] :]
    return "\n".join(error[:TAIL_LINES])
