"""Files of a run directory that must survive crashes, full disks and concurrent starts: the owner's lock,
atomic writes, the shard appender, and write errors that name the path and the cause.
"""

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from vsibench_eval.errors import DataError

LOCK_FILE = ".lock"


class WriteError(Exception):
    """A write to the run directory failed (disk full, read-only file system, the directory removed)."""

    def __init__(self, path, cause: OSError | str):
        why = cause if isinstance(cause, str) else (cause.strerror or str(cause))
        super().__init__(f"cannot write {path}: {why}")


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it and a rename: the path holds the old content
    or the new one, never a part of it. Raises WriteError (the temporary file removed) on failure."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise WriteError(path, error) from None


class RunLock:
    """Exclusive ownership of a run directory: an flock on {run_dir}/.lock, held while this process lives.

    The kernel releases the lock when its process dies, however it dies, so a SIGKILLed run never blocks the
    resume that follows it. The file holds the owner's pid, host and start time, for the message a second
    process gets (DataError)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 1000).decode("utf-8", "replace").strip() or "another process"
            os.close(self.fd)
            raise DataError(
                f"{run_dir} is in use by {holder}; one process at a time may run in a run directory"
            ) from None
        owner = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}"
        with contextlib.suppress(OSError):  # a full disk: the lock holds, only its owner's name is missing
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, owner.encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class ShardFile:
    """A worker's shard file, appended one whole batch at a time with unbuffered writes, so that a crash or a
    full disk leaves at most one torn last line (resume cuts it off). Raises WriteError on failure, also when
    the file has been removed (a write would go nowhere)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise WriteError(path, error) from None

    def append(self, records: list[dict]) -> None:
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
            removed = os.fstat(self.fd).st_nlink == 0
        except OSError as error:
            raise WriteError(self.path, error) from None
        if removed:
            raise WriteError(self.path, "the file has been removed (was the run directory deleted?)")

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
