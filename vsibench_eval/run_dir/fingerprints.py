"""What a run was started from: a fingerprint of each input file it reads (the data file, and the subset's ids,
the offloaded cognitive maps and the prompt template when used) and of its checkpoint, kept in config.json under
"inputs". A resumed run compares them with the files as they are now and refuses to mix answers from two data
files or two checkpoints.

A file is fingerprinted by its size and sha256; a file over WHOLE_FILE_LIMIT (a checkpoint's weights) by its
size and the sha256 of SAMPLED_BLOCKS blocks of 1 MiB spread over it, first and last included, which a few
seconds read even for a 7B checkpoint. A Hub model is fingerprinted by its commit; a model handed over in memory
(evaluate(model, processor)) is not.
"""

import hashlib
import json
import os
from pathlib import Path

from vsibench_eval.errors import DataError
from vsibench_eval.settings.config import EvalConfig

BLOCK = 1 << 20
WHOLE_FILE_LIMIT = 64 << 20  # files up to this size are hashed whole
SAMPLED_BLOCKS = 32


def file_fingerprint(path: str, whole_file_limit: int = WHOLE_FILE_LIMIT) -> dict:
    """{"size", "sha256"} of a file, or {"size", "sha256_sampled"} for one over `whole_file_limit` bytes."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= whole_file_limit:
            for block in iter(lambda: handle.read(BLOCK), b""):
                digest.update(block)
            return {"size": size, "sha256": digest.hexdigest()}
        for offset in sampled_offsets(size):
            handle.seek(offset)
            digest.update(handle.read(BLOCK))
    return {"size": size, "sha256_sampled": digest.hexdigest()}


def sampled_offsets(size: int) -> list[int]:
    """Where the sampled blocks of a file of `size` bytes (more than SAMPLED_BLOCKS blocks) start, evenly spaced."""
    last = size - BLOCK
    return [last * number // (SAMPLED_BLOCKS - 1) for number in range(SAMPLED_BLOCKS)]


def checkpoint_fingerprint(folder: str) -> dict:
    """{relative path: file_fingerprint} of every file in a checkpoint folder (weights, configs, tokenizer)."""
    files = {}
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(names):
            path = os.path.join(parent, name)
            files[os.path.relpath(path, folder)] = file_fingerprint(path)
    return files


def input_files(config: EvalConfig) -> dict[str, str]:
    """{config field: path} of the input files the run reads besides its videos and checkpoint."""
    files = {"data_file": config.data_file} if config.data_file else {"parquet_file": config.parquet_file}
    if config.subset_ids_file:
        files["subset_ids_file"] = config.subset_ids_file
    if config.use_cognitive_map and config.offload_cogmap:
        files["cogmap_file_path"] = config.cogmap_file_path
    if config.prompt_template_file:
        files["prompt_template_file"] = config.prompt_template_file
    return files


def input_fingerprints(config: EvalConfig, model_in_memory: bool) -> dict:
    """What config.json keeps under "inputs": each input file's fingerprint by its field, and the model's."""
    inputs = {field: file_fingerprint(path) for field, path in input_files(config).items()}
    if model_in_memory:
        inputs["model"] = None
    elif os.path.isdir(config.model_name):
        inputs["model"] = {"files": checkpoint_fingerprint(config.model_name)}
    else:  # a Hub id: config.json's model_revision is the commit it resolved to
        inputs["model"] = {"hub_commit": config.model_revision}
    return inputs


def changed_inputs(config: EvalConfig, saved: dict, current: dict) -> list[str]:
    """A sentence per input that differs between the fingerprints `saved` with the run and the `current` ones."""
    changes = []
    for field in sorted((set(saved) | set(current)) - {"model"}):
        if saved.get(field) != current.get(field):
            changes.append(f"{field} {getattr(config, field, '')} is not the file the run started with")
    before, now = saved.get("model"), current.get("model")
    if before and now and before != now:
        files_before, files_now = before.get("files", {}), now.get("files", {})
        names = set(files_before) | set(files_now)
        differing = sorted(name for name in names if files_before.get(name) != files_now.get(name))
        what = f" ({', '.join(differing[:5])}{', ...' if len(differing) > 5 else ''} changed)" if differing else ""
        changes.append(f"the checkpoint {config.model_name} is not the one the run started with{what}")
    return changes


def check_resumed_inputs(run_dir: Path, config: EvalConfig, model_in_memory: bool) -> None:
    """Refuse (DataError) to resume a run whose input files or checkpoint changed since it started. A run saved
    without fingerprints is not checked here; its stored records are still checked against the questions."""
    config_file = run_dir / "config.json"
    saved = json.loads(config_file.read_text(encoding="utf-8")).get("inputs")
    if saved is None:
        return
    if not isinstance(saved, dict):
        raise DataError(f"resume: {config_file}: field inputs: expected an object of fingerprints, got {saved!r}")
    changes = changed_inputs(config, saved, input_fingerprints(config, model_in_memory))
    if changes:
        raise DataError(
            f"resume: {run_dir}: {'; '.join(changes)}. A resumed run answers from the inputs it started with: "
            "restore them to resume it, or start a new run for the new inputs (the same command without --resume)"
        )
