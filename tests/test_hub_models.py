"""Hub model ids, offline: a Hub-shaped cache folder (models--org--name/snapshots/<commit>/, refs/main) built from
the demo checkpoint stands in for huggingface_hub's cache; the real huggingface_hub finds it there, in the parent
and in the workers. Only the download itself (hub_models.hub_snapshot, when it may reach the Hub) is replaced."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import read_results, run_eval
from huggingface_hub import constants

from vsibench_eval.model import hub as hub_models

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(cache: Path, repo_id: str, model_dir: Path, commit: str = COMMIT) -> Path:
    """Put `model_dir` into `cache` as huggingface_hub lays out a downloaded model; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: for this process (huggingface_hub's constants) and for the workers
    it spawns (the environment they read at start)."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


SUBSET = ("--debug_mode", "true", "--debug_size", "6", "--seed", "3")  # as a run of test_eval_e2e, shared by demo_run


def demo_argv(demo_dirs, tmp_path, model_name: str) -> list[str]:
    demo = demo_dirs("qwen2_5_vl")
    output = ["--output_dir_base", str(tmp_path / "runs")]
    return ["--demo", "--demo_dir", str(demo), "--model_name", model_name, *output, *SUBSET]


@pytest.mark.e2e
def test_a_cached_hub_model_runs_offline_and_config_keeps_its_id_and_commit(
    offline_cache, demo_dirs, demo_run, tmp_path
):
    snapshot = cache_model(offline_cache, "tiny-org/demo-vl", demo_dirs("qwen2_5_vl") / "model")
    status, run_dir = run_eval(demo_argv(demo_dirs, tmp_path, "tiny-org/demo-vl"))
    assert status == 0
    assert run_dir.parent.name == "demo-vl"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_name"] == "tiny-org/demo-vl" and config["model_revision"] == COMMIT
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert f"worker 0: model {snapshot} loaded" in log  # the worker loaded the snapshot folder
    reference = read_results(demo_run("qwen2_5_vl", *SUBSET))
    assert [r["prediction"] for r in read_results(run_dir)] == [r["prediction"] for r in reference]
    assert run_eval(["--resume", str(run_dir), "--output_dir_base", str(tmp_path / "runs")])[0] == 0


@pytest.mark.e2e
def test_offline_without_a_cached_copy_stops_at_once_with_exit_2(offline_cache, demo_dirs, tmp_path, capsys):
    status, run_dir = run_eval(demo_argv(demo_dirs, tmp_path, "tiny-org/absent-vl"))
    assert status == 2 and run_dir is None  # before any run directory or worker
    error = capsys.readouterr().err
    assert "model_name: tiny-org/absent-vl (revision main): not in the Hugging Face cache" in error
    assert "HF_HUB_OFFLINE is set" in error and str(offline_cache) in error
    assert "Traceback" not in error


@pytest.mark.e2e
def test_a_hub_model_is_downloaded_once_in_the_parent_and_workers_load_the_snapshot(
    offline_cache, demo_dirs, tmp_path, monkeypatch
):
    real_snapshot = hub_models.hub_snapshot
    downloads = []

    def hub_snapshot(repo_id, revision, local_only):
        if not local_only:  # the download: the Hub's files arrive in the cache
            downloads.append((repo_id, revision))
            cache_model(offline_cache, repo_id, demo_dirs("qwen2_5_vl") / "model", commit="f" * 40)
        return real_snapshot(repo_id, revision, local_only=True)

    monkeypatch.setattr(hub_models, "hub_snapshot", hub_snapshot)
    argv = demo_argv(demo_dirs, tmp_path, "tiny-org/fresh-vl")
    status, run_dir = run_eval([*argv, "--num_processes", "2", "--debug_size", "8", "--seed", "42"])  # both work
    assert status == 0 and downloads == [("tiny-org/fresh-vl", None)]
    log = (run_dir / "vsibench_eval_default.log").read_text()
    snapshot = offline_cache / "models--tiny-org--fresh-vl" / "snapshots" / ("f" * 40)
    assert f"worker 0: model {snapshot} loaded" in log and f"worker 1: model {snapshot} loaded" in log
    assert json.loads((run_dir / "config.json").read_text())["model_revision"] == "f" * 40


def test_local_folders_and_hub_ids_are_told_apart(tmp_path):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert hub_models.is_hub_id("Qwen/Qwen2.5-VL-7B-Instruct")
    assert not hub_models.is_hub_id("/ckpt/Spatial-R1") and not hub_models.is_hub_id("./org/name")
    assert not hub_models.is_hub_id("checkpoint-500") and not hub_models.is_hub_id("runs/a/checkpoint-500")
    assert not hub_models.is_hub_id(str(tmp_path / "org" / "name"))
    assert hub_models.local_model_path(str(tmp_path), None) == str(tmp_path)
