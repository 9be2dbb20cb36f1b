"""The run directory: creating it, its log, the shard files workers append to, what a resumed run finds
there, and the end of a run (merged results, scores, summary, wandb).

Layout: config.json, shards/ (shard_{rank}.jsonl, worker_{rank}.json, worker_{rank}.stderr),
vsibench_results_{prompt_type}.jsonl, vsibench_eval_{prompt_type}.log, summary.json, and .lock (held by the
process that runs in it).
"""

import contextlib
import json
import logging
import os
import platform
import shlex
import signal
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch
import transformers

from vsibench_eval.errors import DataError
from vsibench_eval.inputs.questions import group_by_video
from vsibench_eval.run_dir.files import LOCK_FILE, RunLock, WriteError, atomic_write
from vsibench_eval.run_dir.fingerprints import check_resumed_inputs, input_fingerprints
from vsibench_eval.scoring import references, report, tracking
from vsibench_eval.settings.config import EvalConfig
from vsibench_eval.settings.protocols import describe, effective_settings

VIDEO_FAILED = "video failed"  # the start of a record's error when its video could not be read
# What a stored record must share with the question of its id to be merged and scored.
QUESTION_FIELDS = ("dataset", "scene_name", "question_type", "question", "options", "ground_truth")
# The stack's lock in a checkout (vsibench_eval/../requirements.txt); an installed copy has none.
STACK_LOCK = Path(__file__).resolve().parents[2] / "requirements.txt"


def make_run_dir(config: EvalConfig, folder: str | None = None) -> Path:
    """A new {output_dir_base}/{folder}/{YYYYmmdd_HHMMSS}/ folder, never an existing one; `folder` defaults to the
    model's basename (a sweep gives each checkpoint a folder name that tells it apart from the others)."""
    parent = Path(config.output_dir_base) / (folder or os.path.basename(config.model_name.rstrip("/")))
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    for suffix in ["", *(f"_{i}" for i in range(1, 100))]:
        run_dir = parent / f"{stamp}{suffix}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name under {parent} for {stamp}")


def open_run_dir(config: EvalConfig, folder: str | None = None, model_in_memory: bool = False) -> tuple[Path, RunLock]:
    """The run directory and its lock, held by this process: the resumed run's, `run_dir` when given (a new
    or empty directory, never one that holds a run or other files), or a new timestamped one. A new one gets
    shards/ and config.json (the settings, and the fingerprints of the inputs under "inputs"); when that fails,
    nothing is left behind. DataError when the directory cannot be used (in use by another process, not empty,
    not writable) or a resumed run's inputs changed since it started."""
    if config.resume:
        run_dir = Path(config.resume)
        lock = lock_run_dir(run_dir)
        try:
            check_resumed_inputs(run_dir, config, model_in_memory)
        except BaseException:  # a DataError, or a stop signal while the checkpoint is hashed
            lock.release()
            raise
        return run_dir, lock
    inputs = input_fingerprints(config, model_in_memory)
    made, lock = [], None  # what this call created, removed again when it fails
    try:
        if config.run_dir:
            run_dir = Path(config.run_dir)
            if not run_dir.exists():
                run_dir.mkdir(parents=True)
                made.append(run_dir)
        else:
            run_dir = make_run_dir(config, folder)
            made.append(run_dir)
        lock = lock_run_dir(run_dir)
        made.append(lock.path)
        check_new_run_dir(run_dir)
        (run_dir / "shards").mkdir()
        made.append(run_dir / "shards")
        atomic_write(run_dir / "config.json", json.dumps(asdict(config) | {"inputs": inputs}, indent=2) + "\n")
        return run_dir, lock
    except BaseException as error:  # a stop signal too: nothing half-made is left behind
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        if lock:
            lock.release()
        if not isinstance(error, OSError | WriteError):
            raise
        where = config.run_dir or Path(config.output_dir_base) / os.path.basename(config.model_name.rstrip("/"))
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise DataError(f"cannot create the run directory in {where}: {cause}") from None


def lock_run_dir(run_dir: Path) -> RunLock:
    try:
        return RunLock(run_dir)
    except OSError as error:
        raise DataError(f"{run_dir}: cannot take the run directory's lock: {error.strerror or error}") from None


def check_new_run_dir(run_dir: Path) -> None:
    """A run_dir given for a new run must be empty: a run in it is resumed, and foreign files (shards of
    another run, without their config.json) must never be adopted."""
    if (run_dir / "config.json").exists():
        raise DataError(f"run_dir: {run_dir} already holds a run; continue it with {resume_flag(run_dir)}")
    others = sorted(path.name for path in run_dir.iterdir() if path.name != LOCK_FILE)
    if others:
        raise DataError(
            f"run_dir: {run_dir} is not empty ({', '.join(others[:5])}) and holds no run (no config.json); "
            "give a new or empty directory"
        )


def resume_flag(run_dir) -> str:
    """`--resume RUN_DIR`, shell-quoted, so that a printed resume command can be pasted as it is."""
    return f"--resume {shlex.quote(str(run_dir))}"


class RunLogHandler(logging.FileHandler):
    """The run's log file. When a write to it fails (full disk, removed folder), one line on stderr says so
    and the log goes on on the console only, instead of a traceback per message."""

    failed = False

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            cause = sys.exc_info()[1]
            why = getattr(cause, "strerror", None) or cause
            print(f"warning: cannot write {self.baseFilename}: {why}; logging to the console only", file=sys.stderr)


def setup_logging(log_path: Path, console_level: int = logging.INFO) -> logging.Logger:
    """Log to the run's log file (every process appends to it) and to the console."""
    logger = logging.getLogger("eval_qwen")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    formatter = logging.Formatter("%(asctime)s [%(processName)s] %(levelname)s %(message)s")
    file_handler = RunLogHandler(log_path, mode="a", encoding="utf-8", delay=True)
    console = logging.StreamHandler()
    console.setLevel(console_level)
    for handler in (file_handler, console):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def start_log(
    config: EvalConfig, run_dir: Path, questions: list[dict], selection: str, model_type: str, console=logging.INFO
):
    """The run's logger, with the config, versions and question selection written first. `model_type`: the
    model's, as prepare() resolved it (its settings are described by the model's family)."""
    log = setup_logging(run_dir / f"vsibench_eval_{config.prompt_type}.log", console_level=console)
    log.info(f"{'resuming' if config.resume else 'run directory'}: {run_dir}")
    log.info("config: " + json.dumps(asdict(config)))
    for line in describe(config, model_type):
        log.info(line)
    running = versions()
    log.info("versions: " + json.dumps(running))
    if STACK_LOCK.is_file():
        for difference in lock_differences(running, pinned_versions(STACK_LOCK.read_text())):
            log.warning(f"{difference}; scores may differ from the locked stack's (pip install -r {STACK_LOCK})")
    else:
        log.info(f"versions: no lock file ({STACK_LOCK}) to compare them with")
    log.info(f"{len(questions)} questions over {len(group_by_video(questions))} videos; {selection}")
    if config.use_cognitive_map and config.offload_cogmap:
        found = sum(q["offloaded_cogmap"] is not None for q in questions)
        log.info(
            f"cognitive maps: {found} of {len(questions)} questions have one in {config.cogmap_file_path}; "
            f"the others: {'generated by the model' if config.cogmap_fallback == 'generate' else 'no map'}"
        )
    return log


def versions() -> dict:
    import decord
    import numpy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "decord": decord.__version__,
        "numpy": numpy.__version__,
    }


def pinned_versions(lock_text: str) -> dict[str, str]:
    """{package: version} of the `name==version` lines of a pip lock file (requirements.txt)."""
    pins = {}
    for line in lock_text.splitlines():
        name, pinned, version = line.split("#")[0].partition("==")
        if pinned:
            pins[name.strip().lower()] = version.strip()
    return pins


def lock_differences(running: dict, pins: dict) -> list[str]:
    """A sentence per package of torch and transformers whose running version is not the locked one (a local
    build tag such as +cu128 aside)."""
    return [
        f"{name} {running[name]} is running, the lock pins {pins[name]}"
        for name in ("torch", "transformers")
        if name in pins and running[name].split("+")[0] != pins[name]
    ]


def read_shard(path: Path, log: logging.Logger) -> list[dict]:
    """Records of one shard file. A torn last line (a process killed mid-write) is cut off the file, so
    that appending goes on from a clean line; a bad line elsewhere is an error naming file and line."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: the bytes after the last newline
    records = []
    for number, line in enumerate(complete, 1):
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if number < len(complete):
                what = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else "not valid JSON"
                raise DataError(f"{path}: line {number}: {what}") from None
            tail = line + b"\n" + tail  # the last newline-terminated line can be torn too
    if tail:
        log.warning(f"{path}: discarding a torn last line ({len(tail)} bytes) left by an interrupted worker")
        try:
            with open(path, "r+b") as handle:
                handle.truncate(len(data) - len(tail))
        except OSError as error:
            raise WriteError(path, error) from None
    return records


def shard_records(run_dir: Path, questions: list[dict], log: logging.Logger) -> dict[int, dict]:
    """Every finished record of the run's questions, by id, each checked against the question of its id."""
    by_id, question_of = {}, {q["id"]: q for q in questions}
    for path in sorted((run_dir / "shards").glob("shard_*.jsonl")):
        for number, record in enumerate(read_shard(path, log), 1):
            if not isinstance(record, dict) or "id" not in record:
                raise DataError(f"{path}: line {number}: not a result record (no id)")
            if record["id"] in question_of:
                check_record(path, number, record, question_of[record["id"]])
                check_answer_fields(path, number, record)
                by_id[record["id"]] = record
    return by_id


def check_record(path: Path, number: int, record: dict, question: dict) -> None:
    """A stored record belongs to the question of its id: the same text, ground truth, type, options and video.
    Otherwise (the data file edited, records swapped between ids) it is named, never scored."""
    for field in QUESTION_FIELDS:
        if record.get(field) != question[field]:
            raise DataError(
                f"{path}: line {number}: id {record['id']}: field {field}: {record.get(field)!r} in the record, "
                f"{question[field]!r} in the run's questions; a record that does not belong to its question is not "
                "scored (restore the data file the run started with, or delete the line: a resume answers it again)"
            )


def check_answer_fields(path: Path, number: int, record: dict) -> None:
    """A stored record holds what merging and scoring read: `prediction` as text, `error` as text or null."""
    for field, kinds, expected in (("prediction", str, "text"), ("error", str | None, "text or null")):
        if field not in record:
            raise DataError(f"{path}: line {number}: id {record['id']}: field {field}: missing")
        if not isinstance(record[field], kinds):
            value = record[field]
            raise DataError(
                f"{path}: line {number}: id {record['id']}: field {field}: expected {expected}, "
                f"got {type(value).__name__} {value!r}"
            )


def answered_ids(run_dir: Path, questions: list[dict], log: logging.Logger, retry_failed: bool = False) -> set[int]:
    """Ids of the questions that already have a record (after cutting torn last lines off the shards). With
    `retry_failed`, the records of failed questions are first taken out of the shards, to be answered again. A
    shards/ folder that was deleted is made again (the answers it held are gone: they are answered again)."""
    shards = run_dir / "shards"
    if not shards.is_dir():
        log.warning(f"{shards}: missing; made again (the answers it held are gone: their questions are answered again)")
        try:
            shards.mkdir()
        except OSError as error:
            raise WriteError(shards, error) from None
    if retry_failed:
        drop_failed_records(run_dir, log)
    done = set(shard_records(run_dir, questions, log))
    if done:
        log.info(f"{len(done)} questions already answered; they are skipped")
    return done


def drop_failed_records(run_dir: Path, log: logging.Logger) -> None:
    """Rewrite each shard file without its failed records (those with an error), atomically."""
    dropped = 0
    for path in sorted((run_dir / "shards").glob("shard_*.jsonl")):
        records = read_shard(path, log)
        kept = [record for record in records if not (isinstance(record, dict) and record.get("error"))]
        if len(kept) < len(records):
            atomic_write(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in kept))
            dropped += len(records) - len(kept)
    log.info(f"retry_failed: {dropped} questions recorded as failed are answered again")


def is_video_error(error: str | None) -> bool:
    return bool(error) and error.startswith(VIDEO_FAILED)


def finish_run(config, run_dir: Path, questions, done_ids, failures: dict, elapsed: float, log, resume: str) -> int:
    """Merge the shards into the results file, score it, write the summary and the table. The exit status
    says whether every question has a result: 0, 128 + signal when a signal stopped the run, else 1 (a failed
    worker, or a write that failed: the message names the path and the cause, and the resume command follows)."""
    try:
        return merge_and_report(config, run_dir, questions, done_ids, failures, elapsed, log, resume)
    except DataError as error:  # a stored record that does not belong to its question
        log.error(str(error))
        return 2
    except WriteError as error:
        for rank, why in sorted(failures.items()):
            log.error(f"worker {rank} {why}")
        log.error(
            f"{error}. Finished answers that were written are kept. Once it can be written, resume with:\n  {resume}"
        )
        return interrupted_status(failures.values()) or 1


def merge_and_report(config, run_dir: Path, questions, done_ids, failures: dict, elapsed, log, resume: str) -> int:
    """finish_run's work; results.jsonl and summary.json are written atomically (never a partial file)."""
    results_path = run_dir / f"vsibench_results_{config.prompt_type}.jsonl"
    by_id = shard_records(run_dir, questions, log)
    records = [by_id[q["id"]] for q in questions if q["id"] in by_id]  # questions are sorted by id
    atomic_write(results_path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    stats = report.summarize(records)  # aggregate()'s scores, the micro mean, datasets and 95 % intervals
    lenient = report.aggregate(records, parser="lenient")
    workers = [json.loads(p.read_text()) for p in sorted((run_dir / "shards").glob("worker_*.json"))]
    failed_videos = sorted({r["dataset"] + "/" + r["scene_name"] for r in records if is_video_error(r["error"])})
    answered = len(records) - len(done_ids)
    summary = {
        **stats,
        "lenient": {"overall": lenient["overall"], "tasks": lenient["tasks"], "parser": "lenient"},
        "complete": len(records) == len(questions),
        "missing": len(questions) - len(records),
        "run_dir": str(run_dir),
        "results_file": str(results_path),
        "model_name": config.model_name,
        "backend": config.backend,
        "server_model": sorted({name for w in workers for name in w.get("server_model", [])}) or None,
        "protocol": config.protocol,
        "prompt_type": config.prompt_type,
        "failed_videos": failed_videos,
        "failed_workers": {str(rank): why for rank, why in failures.items()},
        "seconds": round(elapsed, 2),
        "questions_per_second": round(answered / elapsed, 3) if elapsed > 0 else None,
        "versions": versions(),
        "settings": score_settings(config, workers),
        "workers": workers,
    }
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info(f"{answered} questions answered in {elapsed:.1f}s ({summary['questions_per_second']} questions/s)")
    stages = ("video_decoding", "vision_encoder", "prefill", "generation", "processor", "host_to_device")
    stages = (*stages, "waiting_for_frames")  # the model idle: its next video's frames not ready yet
    stage_seconds = {name: sum(w["seconds"].get(name, 0.0) for w in workers) for name in stages}
    log.info("time in workers: " + ", ".join(f"{name} {value:.1f}s" for name, value in stage_seconds.items()))
    if failed_videos:
        log.warning(f"{len(failed_videos)} video(s) failed: {', '.join(failed_videos)}")
    log.info("accuracy (%):\n" + report.format_table(stats))
    log_references(config, stats, log)
    log.info(f"overall with the lenient parser (rescore: vsibench_acc.py --parser lenient): {lenient['overall']:.2f}")
    log.info(f"results: {results_path}")
    log.info(f"log: {run_dir / f'vsibench_eval_{config.prompt_type}.log'}")
    if config.wandb_project:
        track_run(config, run_dir, summary, records, log)
    if summary["missing"]:
        for rank, why in sorted(failures.items()):
            log.error(f"worker {rank} {why}; its shard is incomplete")
        log.error(
            f"INCOMPLETE: {summary['missing']} of {len(questions)} questions have no result; the table above "
            f"covers only the answered ones. Finished answers are kept. Resume with:\n  {resume}"
        )
        return interrupted_status(failures.values()) or 1
    return 0


def log_references(config: EvalConfig, stats: dict, log) -> None:
    """After the table: the published rows of this run's model (by name or Hub id), and with `reference` every
    published row of the run's protocol with our differences, the others apart (references.py)."""
    published = references.load_references()
    for line in references.model_lines(stats, config.model_name, config.protocol, published):
        log.info(line)
    if config.reference:
        name = os.path.basename(config.model_name.rstrip("/"))
        log.info("published rows:\n" + references.reference_section([(name, stats, config.protocol)], published))


def interrupted_status(reasons) -> int | None:
    """The exit status of a run stopped by a signal, from the reasons its workers stopped ("interrupted by
    SIGTERM", ...), or None when no signal stopped it."""
    for reason in reasons:
        if reason.startswith("interrupted by "):
            return 128 + signal.Signals[reason.removeprefix("interrupted by ")].value
    return None


def track_run(config: EvalConfig, run_dir: Path, summary: dict, records: list[dict], log) -> None:
    """Log the finished run to wandb (tracking.log_run); a wandb failure is logged and loses none of the run's files."""
    name = f"{os.path.basename(config.model_name.rstrip('/'))}/{run_dir.name}"
    try:
        where = tracking.log_run(config.wandb_project, name, asdict(config), summary, records, run_dir)
    except DataError as error:
        log.error(f"{error}; the run's own files are complete")
        return
    log.info(f"wandb: logged to project {config.wandb_project} ({where})")


def score_settings(config: EvalConfig, workers: list[dict]) -> dict:
    """What changes scores besides the model, recorded in every summary: the effective value of every
    score-changing setting (protocols.SCORE_SETTINGS), the generation settings in force after merging the
    checkpoint's generation_config.json, the parser, and where it ran."""
    generation = [w["generation"] for w in workers if "generation" in w]
    return effective_settings(config) | {
        "generation": generation[0] if generation else None,
        "parser": "official",
        "dtype": sorted({w["dtype"] for w in workers}),
        "attention": sorted({w["attention"] for w in workers}),
        "vision_attention": sorted({w.get("vision_attention", w["attention"]) for w in workers}),
        "devices": sorted({w["device"] for w in workers}),
        "decoder": sorted({w.get("decoder", "hf") for w in workers}),
        "batching": {
            "batch_size": config.batch_size,
            "batch_tokens": config.batch_tokens,
            "spans_videos": any(w.get("batches_span_videos", False) for w in workers),  # the fast decoder's arena
        },
        "api": next((w["api"] for w in workers if "api" in w), None),  # a served model's server and client settings
    }
