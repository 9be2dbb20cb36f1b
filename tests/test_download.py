"""VSI-Bench from the Hub, offline: a Hub-shaped folder (questions + video zips) stands in for the Hub, and
the one function that calls huggingface_hub (download.hub_download) is replaced by a copy from that folder."""

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from helpers import read_results, run_eval
from huggingface_hub import errors

from vsibench_eval.errors import DataError
from vsibench_eval.inputs import download


def zip_videos(video_dir: Path, name: str, out: Path, nested: bool = True) -> None:
    """out/{name}.zip holding {name}/{scene}.mp4 (as upstream), or bare {scene}.mp4 when not nested."""
    with zipfile.ZipFile(out / f"{name}.zip", "w") as archive:
        for video in sorted((video_dir / name).glob("*.mp4")):
            archive.write(video, f"{name}/{video.name}" if nested else video.name)


@pytest.fixture
def hub(demo_dirs, tmp_path):
    """A Hub-shaped folder in the newer layout (test.jsonl, pruned_ids.txt, three zips) built from the demo set."""
    demo = demo_dirs("qwen2_5_vl") / "vsibench"
    folder = tmp_path / "hub"
    folder.mkdir()
    table = pd.read_parquet(demo / "test.parquet")
    rows = [
        {**row, "options": None if row["options"] is None else list(row["options"])} for row in table.to_dict("records")
    ]
    (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "pruned_ids.txt").write_text("\n".join(str(i) for i in table["id"][::3]) + "\n")
    for name in ("arkitscenes", "scannet", "scannetpp"):
        zip_videos(demo, name, folder, nested=name != "scannetpp")
    return folder


@pytest.fixture
def fake_hub(hub, monkeypatch):
    """Replace the Hub call: files come from `hub`; a missing one raises the Hub's own error. Returns the calls."""
    calls = []

    def hub_download(repo_id, filename, revision):
        calls.append(filename)
        if not (hub / filename).is_file():
            raise errors.EntryNotFoundError(f"{filename} not found in {repo_id}")
        return str(hub / filename)

    monkeypatch.setattr(download, "hub_download", hub_download)
    return calls


@pytest.mark.e2e
def test_download_then_evaluate(fake_hub, hub, demo_dirs, tmp_path):
    data_dir = tmp_path / "data"
    argv = [
        "--download",
        "--data_dir", str(data_dir),
        "--parquet_file", str(tmp_path / "absent" / "test.parquet"),
        "--video_dir", str(tmp_path / "absent"),
        "--model_name", str(demo_dirs("qwen2_5_vl") / "model"),
        "--num_processes", "1", "--batch_size", "4", "--max_new_tokens", "4",
        "--output_dir_base", str(tmp_path / "runs"),
    ]  # fmt: skip
    status, run_dir = run_eval(argv)
    assert status == 0
    assert len(read_results(run_dir)) == 40
    assert {r["error"] for r in read_results(run_dir)} == {None}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["parquet_file"] == str(data_dir / "test.parquet") and config["video_dir"] == str(data_dir)
    manifest = json.loads((data_dir / download.MANIFEST).read_text())
    assert manifest["repo_id"] == "nyu-visionx/VSI-Bench" and manifest["layout"] == "jsonl+pruned_ids"
    assert manifest["videos"] == {"arkitscenes.zip": 2, "scannet.zip": 1, "scannetpp.zip": 1}
    table = pd.read_parquet(data_dir / "test.parquet")
    pruned = {int(i) for i in (hub / "pruned_ids.txt").read_text().split()}
    assert set(table.loc[table["pruned"], "id"]) == pruned
    # The bare zip (scannetpp) lands in its folder like the nested ones.
    assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.mp4")) == sorted(
        p.relative_to(demo_dirs("qwen2_5_vl") / "vsibench").as_posix()
        for p in (demo_dirs("qwen2_5_vl") / "vsibench").rglob("*.mp4")
    )


def test_a_complete_unzip_is_reused_and_a_partial_one_redone(fake_hub, hub, tmp_path):
    data_dir = tmp_path / "data"
    download.ensure_vsibench(data_dir=str(data_dir))
    scannet = data_dir / "scannet"
    first = {p: p.stat().st_mtime_ns for p in scannet.rglob("*.mp4")}
    download.ensure_vsibench(data_dir=str(data_dir))
    assert {p: p.stat().st_mtime_ns for p in scannet.rglob("*.mp4")} == first  # not unzipped again

    # A killed unzip: a video missing from the folder, the marker still there; and a leftover scratch folder.
    arkit_videos = sorted((data_dir / "arkitscenes").glob("*.mp4"))
    arkit_videos[0].unlink()
    (data_dir / ".arkitscenes-partial-x").mkdir()
    # A marker for another zip of the same name (another revision) is not trusted either.
    marker = data_dir / ".scannet.unzipped.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "zip_bytes": 1}))
    download.ensure_vsibench(data_dir=str(data_dir))
    assert sorted((data_dir / "arkitscenes").glob("*.mp4")) == arkit_videos
    assert all(p.stat().st_mtime_ns != first[p] for p in scannet.rglob("*.mp4"))  # redone
    assert json.loads(marker.read_text())["zip_bytes"] == (hub / "scannet.zip").stat().st_size


def test_the_older_layout_with_one_parquet(fake_hub, hub, demo_dirs, tmp_path):
    (hub / "test.jsonl").unlink()
    (hub / "pruned_ids.txt").unlink()
    shutil.copy(demo_dirs("qwen2_5_vl") / "vsibench" / "test.parquet", hub / download.OLD_QUESTIONS)
    data_dir = tmp_path / "data"
    fetched = download.ensure_vsibench(data_dir=str(data_dir))
    assert fetched["parquet"] == data_dir / "test.parquet"
    table = pd.read_parquet(fetched["parquet"])
    assert len(table) == 40 and "pruned" not in table.columns
    assert json.loads((data_dir / download.MANIFEST).read_text())["layout"] == "parquet"


def test_a_zip_that_escapes_its_folder_is_refused(fake_hub, hub, tmp_path):
    with zipfile.ZipFile(hub / "scannet.zip", "w") as archive:
        archive.writestr("../evil.mp4", b"x")
    with pytest.raises(DataError, match=r"scannet.zip: member '../evil.mp4' would be written outside"):
        download.ensure_vsibench(data_dir=str(tmp_path / "data"))
    assert not (tmp_path / "evil.mp4").exists()


@pytest.mark.e2e
def test_offline_without_a_cached_copy_stops_with_exit_2(monkeypatch, tmp_path, capsys):
    def offline(repo_id, filename, revision):
        raise errors.LocalEntryNotFoundError("Cannot reach the Hub and the file is not cached")

    monkeypatch.setattr(download, "hub_download", offline)
    argv = ["--dataset", "nyu-visionx/VSI-Bench", "--data_dir", str(tmp_path / "data")]
    assert run_eval([*argv, "--output_dir_base", str(tmp_path / "runs")])[0] == 2
    assert "nyu-visionx/VSI-Bench/test.jsonl: not in the local cache, and the Hub cannot be reached" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_missing_data_says_how_to_get_it(tmp_path, capsys):
    argv = ["--parquet_file", str(tmp_path / "test.parquet"), "--video_dir", str(tmp_path / "videos")]
    assert run_eval([*argv, "--output_dir_base", str(tmp_path / "runs")])[0] == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'test.parquet'}: data file not found; add --download" in err
    assert "{video_dir}/{dataset}/{scene_name}.mp4" in err
