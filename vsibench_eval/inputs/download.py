"""VSI-Bench from the Hugging Face Hub: the questions and the three video zips, downloaded once through
huggingface_hub's cache and unzipped once into a data folder laid out as the evaluator reads it.

`hub_download` is the only function that reaches the Hub.

The data folder holds test.parquet (every question, with a boolean `pruned` column when the revision
publishes the debiased split), {dataset}/{scene_name}.mp4, and vsibench_download.json saying which repository
and revision it came from. Two Hub layouts exist: older revisions hold test-00000-of-00001.parquet, newer
ones test.jsonl with pruned_ids.txt (the ids that VSI-Bench-Debiased removes).
"""

import json
import os
import shutil
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vsibench_eval.errors import DataError
from vsibench_eval.inputs.questions import read_jsonl

HUB_DATASET = "nyu-visionx/VSI-Bench"
VIDEO_ZIPS = ("arkitscenes.zip", "scannet.zip", "scannetpp.zip")
OLD_QUESTIONS = "test-00000-of-00001.parquet"
NEW_QUESTIONS = ("test.jsonl", "pruned_ids.txt")
MANIFEST = "vsibench_download.json"

if TYPE_CHECKING:
    import pandas as pd

HOW_TO_GET_DATA = (
    f"add --download to fetch VSI-Bench from the Hugging Face Hub ({HUB_DATASET}: the questions and "
    f"{', '.join(VIDEO_ZIPS)}, about 5.7 GB) into --data_dir (default: $HF_HOME/vsibench) and run on it; "
    "or download them yourself and unzip them so that a row's video is {video_dir}/{dataset}/{scene_name}.mp4"
)


def default_data_dir() -> Path:
    """$HF_HOME/vsibench, where lmms-eval also looks for VSI-Bench's videos."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "vsibench"


def hub_download(repo_id: str, filename: str, revision: str | None) -> str:
    """The local path of one file of a Hub dataset, downloaded into huggingface_hub's cache unless already there."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision)


def fetch(repo_id: str, filename: str, revision: str | None) -> Path:
    """hub_download, with the Hub's errors turned into DataError; a file the revision lacks raises FileNotFoundError."""
    from huggingface_hub import errors

    try:
        return Path(hub_download(repo_id, filename, revision))
    except errors.LocalEntryNotFoundError as error:  # offline (or HF_HUB_OFFLINE) and not in the cache
        raise DataError(
            f"{repo_id}/{filename}: not in the local cache, and the Hub cannot be reached ({error})"
        ) from None
    except errors.EntryNotFoundError:
        raise FileNotFoundError(filename) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as error:
        raise DataError(f"{repo_id} (revision {revision or 'main'}): {type(error).__name__}: {error}") from None
    except OSError as error:  # network failures, a full disk
        raise DataError(f"{repo_id}/{filename}: download failed ({type(error).__name__}: {error})") from None


def revision_of(path: Path, requested: str | None) -> str:
    """The commit a cached Hub file belongs to (its snapshots/<sha>/ folder), else the revision asked for."""
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    return requested or "main"


# ---------------------------------------------------------------- questions


def questions_table(repo_id: str, revision: str | None) -> tuple["pd.DataFrame", str, Path]:
    """Every question of the revision, with `pruned` where the revision lists pruned ids; the layout's name
    and one downloaded file (for its revision)."""
    import pandas as pd  # loaded only when data is fetched

    try:
        jsonl = fetch(repo_id, NEW_QUESTIONS[0], revision)
    except FileNotFoundError:
        try:
            parquet = fetch(repo_id, OLD_QUESTIONS, revision)
        except FileNotFoundError:
            raise DataError(
                f"{repo_id} (revision {revision or 'main'}): neither {NEW_QUESTIONS[0]} nor {OLD_QUESTIONS} found"
            ) from None
        return pd.read_parquet(parquet), "parquet", parquet
    table = pd.DataFrame(read_jsonl(str(jsonl)))
    try:
        pruned_ids = fetch(repo_id, NEW_QUESTIONS[1], revision)
    except FileNotFoundError:
        return table, "jsonl", jsonl
    pruned = {int(line) for line in pruned_ids.read_text().split() if line.strip()}
    table["pruned"] = table["id"].astype(int).isin(pruned)
    return table, "jsonl+pruned_ids", jsonl


# ---------------------------------------------------------------- videos


def unzip_once(zip_path: Path, data_dir: Path) -> int:
    """Unzip `zip_path` (e.g. scannet.zip) into data_dir/scannet/ unless a complete earlier unzip of the same
    file is there; returns the number of videos. A partial unzip (killed, disk full) is detected and redone:
    the files go to a temporary folder renamed into place, and a marker written last records the zip's size
    and the video count, both checked on reuse."""
    name = zip_path.stem
    target, marker = data_dir / name, data_dir / f".{name}.unzipped.json"
    expected = {"zip": zip_path.name, "zip_bytes": zip_path.stat().st_size}
    if marker.is_file() and target.is_dir():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in expected} == expected and len(list(target.rglob("*.mp4"))) == done.get("videos"):
            return done["videos"]
    marker.unlink(missing_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=data_dir))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            check_members(zip_path, members)
            # The zips hold {name}/{scene}.mp4; a zip of bare files gets the folder added.
            nested = all(m.startswith(f"{name}/") for m in members)
            archive.extractall(scratch if nested else scratch / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch / name, target)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{zip_path}: cannot unzip into {data_dir} ({type(error).__name__}: {error})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    videos = len(list(target.rglob("*.mp4")))
    marker.write_text(json.dumps({**expected, "videos": videos}) + "\n")
    return videos


def check_members(zip_path: Path, members: list[str]) -> None:
    """A zip must not write outside its folder (absolute paths, '..')."""
    for member in members:
        if member.startswith("/") or ".." in Path(member).parts:
            raise DataError(f"{zip_path}: member {member!r} would be written outside the data folder")


# ---------------------------------------------------------------- the data folder


def ensure_vsibench(repo_id: str = HUB_DATASET, revision: str | None = None, data_dir: str | None = None) -> dict:
    """Download what is missing and unzip what is not unzipped; returns {"parquet", "video_dir", "revision"}."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"data_dir: {data_dir}: cannot create ({error.strerror or error})") from None
    table, layout, source = questions_table(repo_id, revision)
    parquet = data_dir / "test.parquet"
    scratch = data_dir / ".test.parquet.partial"
    table.to_parquet(scratch, index=False)
    os.replace(scratch, parquet)
    videos = {name: unzip_once(fetch(repo_id, name, revision), data_dir) for name in VIDEO_ZIPS}
    manifest = {
        "repo_id": repo_id,
        "revision_requested": revision,
        "revision": revision_of(source, revision),
        "layout": layout,
        "questions": len(table),
        "videos": videos,
        "downloaded": datetime.now().isoformat(timespec="seconds"),
    }
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return {"parquet": parquet, "video_dir": data_dir, "revision": manifest["revision"]}
