"""The run's progress, shown by the parent process while its workers answer: questions done of the total,
questions per second, time left, failed answers. It is read from the workers' shard files (the records of earlier
launches of a resumed run included), so a worker that dies leaves its finished batches counted and nothing to
clean up. On a terminal it is one live
bar; otherwise (a file such as a SLURM .out) a plain log line every `interval` seconds and one at the end.
"""

import contextlib
import json
import logging
import sys
import time
from datetime import timedelta
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class ShardProgress:
    """The questions answered, and how many of them failed (their latest record has an error), from the complete
    lines of shards/shard_*.jsonl; each poll reads only what was appended since the last one."""

    def __init__(self, shard_dir: Path):
        self.shard_dir = shard_dir
        self.offsets: dict[Path, int] = {}
        self.answered: set[int] = set()
        self.failed: set[int] = set()

    def poll(self) -> tuple[int, int]:
        """(answered, failed) so far."""
        for path in sorted(self.shard_dir.glob("shard_*.jsonl")):
            start = self.offsets.get(path, 0)
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]  # a batch being written is counted once it is whole
            self.offsets[path] = start + len(complete)
            for line in complete.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a torn line: the merge at the end reports it
                    continue
                self.answered.add(record["id"])
                if record.get("error"):
                    self.failed.add(record["id"])
                else:
                    self.failed.discard(record["id"])
        return len(self.answered), len(self.failed)


def progress_line(done: int, total: int, new: int, failed: int, seconds: float) -> str:
    """ "progress: 120/5130 questions (2%), 1.52 questions/s, ETA 0:54:56, 0 failed"; `new` of the `done`
    questions were answered in this run's `seconds`, which give the rate."""
    rate = new / seconds if seconds > 0 else 0.0
    eta = str(timedelta(seconds=round((total - done) / rate))) if rate > 0 else "unknown"
    share = f" ({100 * done / total:.0f}%)" if total else ""
    return f"progress: {done}/{total} questions{share}, {rate:.2f} questions/s, ETA {eta}, {failed} failed"


class RunProgress:
    """The progress display of one run, used as `with RunProgress(...) as progress:`, calling
    `progress.update()` about once a second; on leaving, the final count is logged (unless the last line
    already says it).

    `already`: questions answered by an earlier launch (resume): done from the start, and not part of the rate."""

    def __init__(self, shard_dir: Path, total: int, already: int, log: logging.Logger, interval: float, stream=None):
        self.shards, self.total, self.already = ShardProgress(shard_dir), total, already
        self.log, self.interval, self.stream = log, interval, stream or sys.stderr
        self.bar, self.cleanup = None, contextlib.ExitStack()
        self.logged = None  # the (new, failed) of the last line logged

    def __enter__(self):
        self.started = self.last_line = time.monotonic()
        if self.stream.isatty():
            self.bar = self.cleanup.enter_context(
                tqdm(total=self.total, initial=self.already, unit="q", desc="questions", file=self.stream)
            )
            self.bar.set_postfix(failed=0)
            self.cleanup.enter_context(logging_redirect_tqdm(loggers=[self.log]))  # log lines go above the bar
        return self

    def update(self) -> None:
        done, failed = self.shards.poll()
        if self.bar is not None:
            self.bar.set_postfix(failed=failed, refresh=False)
            self.bar.update(done - self.bar.n)
        elif time.monotonic() - self.last_line >= self.interval:
            self.log_line(done, failed)

    def __exit__(self, *exc):
        done, failed = self.shards.poll()
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        self.cleanup.close()
        if (done, failed) != self.logged:
            self.log_line(done, failed)

    def log_line(self, done: int, failed: int) -> None:
        seconds = time.monotonic() - self.started
        self.log.info(progress_line(done, self.total, done - self.already, failed, seconds))
        self.last_line, self.logged = time.monotonic(), (done, failed)
