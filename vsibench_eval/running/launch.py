"""Starting the work: one run from its config to its summary, its questions answered by one spawned worker
process per shard, each on its own GPU (or the CPU), or in this process by a model the caller holds (the Python
API), or, under torchrun / accelerate launch, by this process as one rank.
"""

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from datetime import timedelta
from multiprocessing import connection
from pathlib import Path

import torch

from vsibench_eval.errors import DataError
from vsibench_eval.inputs.questions import shard_by_video
from vsibench_eval.run_dir.directory import (
    answered_ids,
    finish_run,
    open_run_dir,
    resume_flag,
    shard_records,
    start_log,
)
from vsibench_eval.run_dir.files import WriteError
from vsibench_eval.running.prepare import prepare, select_questions
from vsibench_eval.running.progress import RunProgress
from vsibench_eval.running.spawning import WorkerStderr, stderr_tail
from vsibench_eval.running.stopping import (
    SERVER_UNREACHABLE,
    WRITE_FAILED,
    Interrupted,
    stop_signals_interrupt,
    stop_with_parent,
)
from vsibench_eval.running.worker import evaluate_in_process, evaluate_questions, evaluate_shard
from vsibench_eval.settings.config import EvalConfig


def run_command(config: EvalConfig, given: set[str], **options) -> tuple[int, Path | None]:
    """run_single for the command line: a DataError before the run directory exists is printed (exit 2), and so
    is a stop signal then (nothing was written; a resumed run is as it was)."""
    try:
        return run_single(config, given, **options)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2, None
    except Interrupted as stop:
        hint = f" Resume with:\n  python eval_qwen.py {resume_flag(config.resume)}" if config.resume else ""
        print(f"interrupted by {stop.signal_name} while starting; nothing was written.{hint}", file=sys.stderr)
        return stop.status, None


def run_single(
    config: EvalConfig,
    given: set[str],
    selected: tuple | None = None,  # (questions, selection) chosen already (config.prepare)
    model_type: str | None = None,  # the model's, when known already
    folder: str | None = None,  # the run directory's parent folder name (run_dir/directory.py make_run_dir)
    loaded: tuple | None = None,  # (model, processor) held by the caller: answered in this process
) -> tuple[int, Path]:
    """One run: config settled and checked, run directory, log, answers (worker processes, or this process for a
    `loaded` model), merged results, summary. Returns the exit status and the run directory. A DataError before the
    run directory exists is raised; once it exists, failures are logged and decide the status (finish_run)."""
    if loaded is not None:
        model_type = loaded[0].config.model_type
    # A stop signal at any time stops the run the same way (one before the run directory exists is raised: nothing
    # to resume); a caller's own process keeps its handlers.
    stops = stop_signals_interrupt() if loaded is None else contextlib.nullcontext()
    with stops:
        config, questions, selection, model_type = prepare(config, given, selected, model_type)
        run_dir, lock = open_run_dir(config, folder, loaded is not None)  # this process owns it until it returns
        with lock:
            return run_in_dir(config, run_dir, questions, selection, model_type, loaded)


def run_in_dir(config: EvalConfig, run_dir: Path, questions, selection: str, model_type: str, loaded) -> tuple:
    """run_single's work once its run directory is made and locked: the status and the run directory."""
    resume = f"python eval_qwen.py {resume_flag(run_dir)}"
    log = None
    try:
        log = start_log(config, run_dir, questions, selection, model_type)
        done_ids = answered_ids(run_dir, questions, log, config.retry_failed)
        started = time.perf_counter()
        if loaded is None:
            shards = shard_by_video(questions, config.num_processes)
            failures = run_workers(config, shards, done_ids, run_dir, log)
        else:
            evaluate_in_process(*loaded, config, questions, done_ids, run_dir, log)
            failures = {}
        elapsed = time.perf_counter() - started
        return finish_run(config, run_dir, questions, done_ids, failures, elapsed, log, resume), run_dir
    except DataError as error:
        return stopped(log, str(error), 2), run_dir
    except WriteError as error:
        return stopped(log, f"{error}; once it can be written, resume with:\n  {resume}", 1), run_dir
    except Interrupted as stop:
        message = f"interrupted by {stop.signal_name}; finished batches are kept. Resume with:\n  {resume}"
        return stopped(log, message, stop.status), run_dir


def stopped(log: logging.Logger | None, message: str, status: int) -> int:
    """Say why a run stopped, in its log (on stderr when it stopped before its log was open); returns `status`."""
    if log is None:
        print(f"error: {message}", file=sys.stderr)
    else:
        log.error(message)
    return status


def worker_devices(config: EvalConfig) -> list[str]:
    """Device of each worker: "cuda:<id>" from gpu_ids, round robin, or "cpu" when CUDA is absent."""
    if not torch.cuda.is_available():
        return ["cpu"] * config.num_processes
    gpu_ids = [g.strip() for g in str(config.gpu_ids).split(",") if g.strip()]
    if not gpu_ids:
        raise DataError("gpu_ids: empty; give at least one CUDA device id")
    return [f"cuda:{gpu_ids[rank % len(gpu_ids)]}" for rank in range(config.num_processes)]


def run_workers(
    config: EvalConfig, shards: list[list[dict]], done_ids: set[int], run_dir: Path, log: logging.Logger
) -> dict[int, str]:
    """One spawned process per shard with work left; returns {rank: why it stopped} for the workers that did
    not finish.

    A failed worker does not stop the others: they finish their shards. SIGINT (Ctrl-C), SIGTERM and SIGHUP
    stop all of them, their finished batches kept. Each worker stops by itself when this process dies.
    """
    devices = worker_devices(config)
    context = mp.get_context("spawn")  # CUDA cannot be forked; each worker starts clean
    workers, stderrs = {}, {}  # by rank: the process, its standard error (spawning.WorkerStderr)
    first_id = min((q["id"] for shard in shards for q in shard if q["id"] not in done_ids), default=None)
    with stop_signals_interrupt():
        try:
            for rank, shard in enumerate(shards):
                todo = sum(q["id"] not in done_ids for q in shard)
                if not todo:
                    continue
                log.info(f"worker {rank}: {todo} questions on {devices[rank]}")
                shard_done = {q["id"] for q in shard} & done_ids
                compare_first = any(q["id"] == first_id for q in shard)
                process = context.Process(
                    target=evaluate_shard,
                    args=(rank, devices[rank], config, shard, shard_done, str(run_dir), compare_first, os.getpid()),
                    name=f"worker-{rank}",
                )
                stderrs[rank] = WorkerStderr(run_dir / "shards" / f"worker_{rank}.stderr")
                with stderrs[rank].given_to_children():
                    process.start()
                workers[rank] = process
            total = sum(len(shard) for shard in shards)
            with RunProgress(run_dir / "shards", total, len(done_ids), log, config.progress_seconds) as progress:
                return watch_workers(workers, stderrs, progress, log)
        except Interrupted as stop:
            log.error(f"interrupted by {stop.signal_name}: stopping the workers; finished batches are kept")
            stop_workers(list(workers.values()))
            return {rank: f"interrupted by {stop.signal_name}" for rank in workers}


def watch_workers(
    workers: dict[int, mp.Process], stderrs: dict[int, WorkerStderr], progress: RunProgress, log: logging.Logger
) -> dict[int, str]:
    """Wait for every worker, updating the progress display about once a second. A worker that stops early
    is named at once, with why; the others go on. Returns {rank: why} for the workers that did not finish."""
    running, failures = dict(workers), {}
    while running:
        connection.wait([process.sentinel for process in running.values()], timeout=1.0)
        for rank, process in list(running.items()):
            if not process.is_alive():
                process.join()
                del running[rank]
                if process.exitcode != 0:
                    failures[rank] = death_reason(process.exitcode, stderrs[rank])
                    log.warning(f"worker {rank} {failures[rank]}\nthe other workers go on")
        progress.update()
    return failures


def death_reason(exitcode: int, stderr: WorkerStderr) -> str:
    """Why a worker stopped (exit_reason), with the end of its standard error when that says why: after an
    exit status, its traceback or last lines; after a signal, a traceback or fatal error if it wrote one. Stop
    signals and a failed write are logged by the worker itself."""
    reason = exit_reason(exitcode)
    if reason.startswith(("exited", "killed")):
        tail = stderr_tail(stderr.text(), only_errors=exitcode < 0)
        if tail:
            return f"{reason}; the end of its standard error (shards/{stderr.path.name}):\n{tail}"
    return reason


def stop_workers(processes: list, grace_seconds: float = 30.0) -> None:
    """SIGTERM every worker (each stops between two steps, its finished batches on disk), then SIGKILL the
    ones still running after `grace_seconds`."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def exit_reason(exitcode: int) -> str:
    if exitcode < 0:
        return f"killed by signal {signal.Signals(-exitcode).name}"
    if exitcode == WRITE_FAILED:
        return "stopped: a write to the run directory failed (its message is above)"
    if exitcode == SERVER_UNREACHABLE:
        return "stopped: the model's server could not be reached (its message is above)"
    if exitcode - 128 in signal.valid_signals():
        return f"stopped by {signal.Signals(exitcode - 128).name}"
    return f"exited with status {exitcode}"


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun or accelerate, else None."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(name in os.environ for name in names):
        return None
    return tuple(int(os.environ[name]) for name in names)


def main_torchrun(config: EvalConfig, given: set[str]) -> int:
    """One rank of a torchrun job: rank 0 prepares and locks the run directory, every rank answers its shard
    in-process on the GPU of its LOCAL_RANK, and rank 0 merges and scores once every rank has finished.

    All ranks must see the run directory (a shared filesystem). A rank stops, its finished batches kept, on
    SIGINT, SIGTERM or SIGHUP (torchrun passes them on) and when its launcher dies."""
    import torch.distributed as dist

    rank, world_size, local_rank = torchrun_ranks()
    stop_with_parent(os.getppid())  # the launcher: no rank outlives it, however it dies
    mp.current_process().name = f"rank-{rank}"  # how log lines name their process
    timeout = timedelta(minutes=config.dist_timeout_minutes)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    gloo = dist.new_group(backend="gloo", timeout=timeout)  # monitored_barrier names missing ranks; gloo only
    held = {}  # rank 0's lock on the run directory, and the run directory once known
    try:
        with stop_signals_interrupt():
            return torchrun_rank(config, given, dist, gloo, timeout, held)
    except Interrupted as stop:
        resume = (
            f"; resume with the same torchrun command and {resume_flag(held['run_dir'])}" if "run_dir" in held else ""
        )
        logging.getLogger("eval_qwen").error(
            f"rank {rank}: interrupted by {stop.signal_name}; finished batches are kept{resume}"
        )
        print(f"rank {rank}: interrupted by {stop.signal_name}{resume}", file=sys.stderr)
        return stop.status
    finally:
        if "lock" in held:
            held["lock"].release()
        dist.destroy_process_group()


def torchrun_rank(config: EvalConfig, given: set[str], dist, gloo, timeout, held: dict) -> int:
    """main_torchrun's work, with stop signals raising Interrupted."""
    rank, world_size, local_rank = torchrun_ranks()
    decided = [0, None, None, None]  # exit status, config, run dir, model type: rank 0 decides, the others follow
    if rank == 0:
        try:
            config, questions, selection, model_type = prepare(config, given)
            run_dir, held["lock"] = open_run_dir(config)
            log = start_log(config, run_dir, questions, selection, model_type)
            done_ids = answered_ids(
                run_dir, questions, log, config.retry_failed
            )  # also cuts torn lines before anyone appends
            log.info(f"torchrun: {world_size} ranks; if the job stops, relaunch it with {resume_flag(run_dir)}")
            decided = [0, config, str(run_dir), model_type]
        except (DataError, WriteError) as error:
            print(f"error: {error}", file=sys.stderr)
            decided = [2 if isinstance(error, DataError) else 1, None, None, None]
    dist.broadcast_object_list(decided, src=0)
    status, config, run_dir, model_type = decided
    if status:
        return status
    run_dir = held["run_dir"] = Path(run_dir)
    if rank != 0:
        questions, selection = select_questions(config)
        log = start_log(config, run_dir, questions, selection, model_type, logging.WARNING)
    dist.barrier(group=gloo)
    if rank != 0:
        done_ids = set(shard_records(run_dir, questions, log))
    shard = shard_by_video(questions, world_size)[rank]
    first_id = min((q["id"] for q in questions if q["id"] not in done_ids), default=None)
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(local_rank)
    started = time.perf_counter()
    if any(q["id"] not in done_ids for q in shard):
        compare_first = any(q["id"] == first_id for q in shard)
        try:
            evaluate_questions(rank, device, config, shard, done_ids, run_dir, log, compare_first)
        except WriteError as error:
            log.error(f"rank {rank}: {error}; stopping, its finished batches are kept")
            return WRITE_FAILED
    failures = {}
    try:
        dist.monitored_barrier(group=gloo, timeout=timeout, wait_all_ranks=True)
    except RuntimeError as error:  # only rank 0 waits for the others here
        log.error(f"not every rank finished within {config.dist_timeout_minutes} minutes: {error}")
        failures = {"?": "did not reach the final barrier"}
    if rank != 0:
        return 0
    resume = f"the same torchrun command with {resume_flag(run_dir)}"
    elapsed = time.perf_counter() - started
    return finish_run(config, run_dir, questions, done_ids, failures, elapsed, log, resume)
