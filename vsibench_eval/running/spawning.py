"""What spawned worker processes need from the program that starts them. multiprocessing's spawn imports the
program's main script again in each worker before any of our code runs there, so a script read from standard
input, or one that starts the run outside `if __name__ == "__main__":`, kills every worker at birth
(main_script_problem finds both first). A worker's standard error goes through this process (WorkerStderr)
to the terminal and to a file in the run directory, so that the reason a worker died, even in that
bootstrap, reaches the run's log and summary (stderr_tail).

Imports only the standard library.
"""

import ast
import codecs
import contextlib
import os
import sys
import threading
from multiprocessing import resource_tracker
from pathlib import Path

ERROR_STARTS = ("Traceback (most recent call last)", "Fatal Python error")  # how Python reports a death on stderr
TAIL_LINES = 12
TAIL_BYTES = 65536  # of a worker's standard error, kept in memory for its death reason


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
        source = Path(path).read_bytes()
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


def under_name_test(source: bytes, line: int) -> bool:
    """Is `line` inside an `if` that tests __name__ (`if __name__ == "__main__":`, however spelled)? True
    when the source is not Python text (a .pyc): then there is no telling, and spawn may well work."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return True
    return any(
        node.lineno <= line <= node.end_lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))
    )


class WorkerStderr:
    """A worker's standard error, from its first instruction on: a pipe that a thread of this process copies
    to this process's standard error (the terminal) and to `path`, keeping its end in memory, so that neither
    the terminal's copy nor the reason a worker died is lost when the file cannot be written (a full disk)."""

    def __init__(self, path: Path):
        self.path = path
        self.read_end, self.write_end = os.pipe()
        self.end = b""  # the last TAIL_BYTES received
        self.copier = threading.Thread(target=self.copy, name=f"stderr-{path.stem}", daemon=True)

    @contextlib.contextmanager
    def given_to_children(self):
        """Processes started inside this block get the pipe as their standard error. This process's own
        standard error points there too meanwhile, so the block holds only a process's start."""
        resource_tracker.ensure_running()  # started by the first spawn otherwise, it would hold the pipe open
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(self.write_end, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(self.write_end)  # the children hold it now: the pipe ends when the last of them exits
            self.copier.start()

    def copy(self) -> None:
        """Copy the pipe until the worker (and whatever it started) has closed it."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        keeps_file = write_bytes(self.path, b"", "wb")
        while chunk := os.read(self.read_end, 65536):
            with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stop the copy
                sys.stderr.write(decoder.decode(chunk))
                sys.stderr.flush()
            self.end = (self.end + chunk)[-TAIL_BYTES:]
            keeps_file = keeps_file and write_bytes(self.path, chunk)
        os.close(self.read_end)

    def text(self, wait_seconds: float = 2.0) -> str:
        """The end of what the worker wrote, once the pipe has ended (waiting at most `wait_seconds`: a
        process the worker started may still hold it)."""
        self.copier.join(wait_seconds)
        return self.end.decode(errors="replace")


def write_bytes(path: Path, data: bytes, mode: str = "ab") -> bool:
    """Write `data` to `path`; False when it cannot be written (the terminal's copy goes on regardless)."""
    try:
        with open(path, mode) as file:
            file.write(data)
    except OSError:
        return False
    return True


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
