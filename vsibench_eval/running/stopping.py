"""How a run stops: SIGINT, SIGTERM, SIGHUP and SIGUSR1 all stop it the way Ctrl-C does, a worker process stops
when its parent dies (however the parent dies), and a pause point lets tests decide when a worker dies.
"""

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

# Ctrl-C, what SLURM, Kubernetes and `kill` send, what a closed terminal sends, and SLURM's usual warning before
# a time limit (sbatch --signal=USR1@90).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
WRITE_FAILED = 74  # a worker's exit status when it could not write to the run directory (sysexits' EX_IOERR)
SERVER_UNREACHABLE = 69  # a worker's exit status when its model's server stayed unreachable (EX_UNAVAILABLE)
PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal this process gets when its parent dies
PARENT_CHECK_SECONDS = 1.0
PAUSE_DIR = "EVAL_QWEN_PAUSE_DIR"  # tests only: see pause_after_first_flush
PAUSE_LIMIT_SECONDS = 600

_parent_pid: int | None = None  # the parent this process must not outlive (set by stop_with_parent)
_paused = False


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, so Ctrl-C's handling applies to every stop signal."""

    def __init__(self, signum: int):
        self.signal_name = signal.Signals(signum).name
        self.status = 128 + signum  # the conventional exit status: 130 SIGINT, 143 SIGTERM, 129 SIGHUP, 138 SIGUSR1
        super().__init__(self.signal_name)


@contextlib.contextmanager
def stop_signals_interrupt():
    """Inside this block the first stop signal (STOP_SIGNALS) raises Interrupted in the main thread; later ones
    are ignored while the first is being handled. The previous handlers come back afterwards. In another thread
    (evaluate() called from one) it changes nothing: only the main thread can set handlers, and it keeps its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def stop_with_parent(parent_pid: int) -> None:
    """Make this process get SIGTERM when its parent `parent_pid` dies: the kernel's parent-death signal on
    Linux, and a thread that checks the parent every second (other systems; and a parent that died before
    the signal was set up). With stop_signals_interrupt active the SIGTERM raises Interrupted."""
    global _parent_pid
    _parent_pid = parent_pid
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    def watch_parent():
        while not parent_gone():
            time.sleep(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()


def parent_gone(wait_seconds: float = 0.0) -> bool:
    """Has the parent given to stop_with_parent died (this process was handed to another parent)? A parent
    dying with several threads first hands its children to another of its threads, so the parent-death
    signal can arrive before the parent has gone: `wait_seconds` gives its death that long to complete."""
    deadline = time.monotonic() + wait_seconds
    while _parent_pid is not None and os.getppid() == _parent_pid:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return _parent_pid is not None


def pause_after_first_flush(rank: int) -> None:
    """Tests only, when the environment variable EVAL_QWEN_PAUSE_DIR names a folder: after a worker's first
    flushed batch, write {folder}/flushed_{rank} (holding the worker's pid) and wait until {folder}/go exists
    (at most PAUSE_LIMIT_SECONDS), so that the test, not a race, decides what happens next (kill the worker,
    fill the disk, ...)."""
    global _paused
    folder = os.environ.get(PAUSE_DIR)
    if not folder or _paused:
        return
    _paused = True
    marker = Path(folder, f"flushed_{rank}")
    marker.with_suffix(".tmp").write_text(str(os.getpid()))
    marker.with_suffix(".tmp").rename(marker)  # the test never reads a half-written pid
    deadline = time.monotonic() + PAUSE_LIMIT_SECONDS  # a test that died never leaves a worker waiting forever
    while not Path(folder, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
