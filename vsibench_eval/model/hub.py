"""Where a checkpoint is loaded from: a local folder, or a Hugging Face Hub model id resolved once, in the parent
process before any worker starts, to a snapshot in huggingface_hub's cache; the workers then load that snapshot's
folder without reaching the Hub.
`hub_snapshot` is the only function that calls the Hub.
"""

import os
from pathlib import Path

from vsibench_eval.errors import DataError

# Weights of other frameworks and formats, which transformers does not read for these models.
SKIPPED_FILES = ["*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.gguf", "*.ot", "*.tflite"]


def is_hub_id(model_name: str) -> bool:
    """Is `model_name` a Hub model id ("org/name") rather than a local folder?"""
    if os.path.isdir(model_name) or model_name.startswith(("/", ".", "~")):
        return False
    return model_name.count("/") == 1 and all(model_name.split("/"))


def hub_snapshot(repo_id: str, revision: str | None, local_only: bool) -> str:
    """The folder of the repository's snapshot at `revision` in huggingface_hub's cache, downloaded unless it is
    already there (or, with `local_only`, only looked up)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, revision=revision, local_files_only=local_only, ignore_patterns=SKIPPED_FILES)


def resolve_hub_model(repo_id: str, revision: str | None) -> tuple[str, str]:
    """(snapshot folder, commit) of a Hub model, downloaded once or found in the cache; DataError when neither
    works, saying why (offline, not found, gated, an incomplete copy)."""
    from huggingface_hub import constants, errors

    where = f"{repo_id} (revision {revision or 'main'})"
    try:
        folder = hub_snapshot(repo_id, revision, local_only=False)
    except errors.LocalEntryNotFoundError as error:  # includes IncompleteSnapshotError
        if isinstance(error, errors.IncompleteSnapshotError):
            raise DataError(f"model_name: {where}: an incomplete copy in the cache ({error})") from None
        how = (
            "HF_HUB_OFFLINE is set"
            if constants.is_offline_mode()
            else "the Hub cannot be reached (check the network, or a proxy)"
        )
        raise DataError(
            f"model_name: {where}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {how}; download it "
            "once where the network is available (it is then found in the cache), or give a local checkpoint folder"
        ) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as error:  # gated repositories too
        raise DataError(f"model_name: {where}: {type(error).__name__}: {error}") from None
    except OSError as error:  # other HTTP errors, a full disk
        raise DataError(f"model_name: {where}: download failed ({type(error).__name__}: {error})") from None
    return folder, Path(folder).name  # the cache keeps a snapshot in snapshots/<commit>/


def local_model_path(model_name: str, revision: str | None) -> str:
    """The folder to load: `model_name` itself when local, else the cached snapshot of that Hub id at `revision`
    (the commit resolve_hub_model recorded), looked up without reaching the Hub."""
    if not is_hub_id(model_name):
        return model_name
    return hub_snapshot(model_name, revision, local_only=True)
