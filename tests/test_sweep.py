"""Sweeps: several checkpoints in one command (names or a quoted glob), the questions selected once, one run
directory per checkpoint that never collides, one table of all runs; a failed checkpoint does not stop the others."""

import json
import re
import shutil

import pytest
from helpers import read_results

import eval_qwen
from vsibench_eval.errors import DataError
from vsibench_eval.metric import TASKS
from vsibench_eval.running import prepare as prepare_module
from vsibench_eval.running.sweep import checkpoint_labels, is_sweep, model_names

SUBSET = ("--debug_mode", "true", "--debug_size", "6", "--seed", "3")  # as a run of test_eval_e2e, shared by demo_run


def test_globs_expand_to_folders_in_natural_order_and_repeats_are_dropped(tmp_path):
    for name in ("runA/checkpoint-1000", "runA/checkpoint-500", "runB/checkpoint-500", "runB/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).mkdir() if not name.endswith(".txt") else (tmp_path / name).write_text("")
    pattern = str(tmp_path / "run*" / "*")
    assert model_names(pattern) == [
        str(tmp_path / "runA/checkpoint-500"),
        str(tmp_path / "runA/checkpoint-1000"),
        str(tmp_path / "runB/checkpoint-500"),
    ]
    again = [str(tmp_path / "runB/checkpoint-500"), pattern, "Qwen/Qwen2.5-VL-7B-Instruct"]
    assert model_names(again)[0] == str(tmp_path / "runB/checkpoint-500") and len(model_names(again)) == 4
    with pytest.raises(DataError, match="model_name: .*nothing-\\*: the pattern matches no folder"):
        model_names(str(tmp_path / "nothing-*"))
    assert is_sweep(pattern) and is_sweep(["a", "b"]) and not is_sweep(["a"]) and not is_sweep("a")


def test_labels_carry_enough_of_the_path_to_tell_checkpoints_apart(tmp_path):
    names = ["/x/runA/checkpoint-500", "/x/runB/checkpoint-500", "/x/runB/checkpoint-900", "Qwen/Qwen2.5-VL-7B"]
    assert checkpoint_labels(names) == ["runA/checkpoint-500", "runB/checkpoint-500", "checkpoint-900", "Qwen2.5-VL-7B"]


@pytest.fixture
def checkpoints(demo_dirs, tmp_path):
    """runA/checkpoint-5 (the demo's Qwen2.5-VL) and runB/checkpoint-5 (its Qwen2-VL): the same basename."""
    root = tmp_path / "ckpt"
    shutil.copytree(demo_dirs("qwen2_5_vl") / "model", root / "runA" / "checkpoint-5")
    shutil.copytree(demo_dirs("qwen2_vl") / "model", root / "runB" / "checkpoint-5")
    return root


@pytest.mark.e2e
def test_a_sweep_selects_the_questions_once_and_ends_with_one_table(
    checkpoints, demo_dirs, demo_run, tmp_path, monkeypatch, capsys
):
    loads = []
    real_load = prepare_module.load_questions
    monkeypatch.setattr(prepare_module, "load_questions", lambda *args: loads.append(args) or real_load(*args))
    (checkpoints / "not-a-model").mkdir()
    out = tmp_path / "runs"
    argv = ["--demo", "--demo_dir", str(demo_dirs("qwen2_5_vl")), "--output_dir_base", str(out), *SUBSET]
    models = [str(checkpoints / "run*" / "checkpoint-*"), str(checkpoints / "not-a-model")]
    status = eval_qwen.main(eval_qwen.EvalConfig(), [*argv, "--model_name", *models])

    assert status == 2  # the first failure's status: the folder that is not a checkpoint; the others still ran
    assert len(loads) == 1  # the questions were read once for the whole sweep
    (run_a,) = (out / "runA--checkpoint-5").iterdir()
    (run_b,) = (out / "runB--checkpoint-5").iterdir()
    for run_dir, run in ((run_a, "runA"), (run_b, "runB")):
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["model_name"] == str(checkpoints / run / "checkpoint-5")  # one model, its full path
    # runA's checkpoint is the demo's: the sweep's run equals the demo's own run of it
    assert read_results(run_a) == read_results(demo_run("qwen2_5_vl", *SUBSET))
    assert len(read_results(run_b)) == 6

    (table_file,) = out.glob("sweep_*.md")
    printed = capsys.readouterr()
    assert table_file.read_text() in printed.out
    assert "not-a-model: no config.json" in printed.err
    table = table_file.read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| run")}
    for run_dir, label in ((run_a, "runA/checkpoint-5"), (run_b, "runB/checkpoint-5")):
        summary = json.loads((run_dir / "summary.json").read_text())
        cells = [cell.strip().strip("*") for cell in rows[label].split("|")[2:-1]]
        expected = [f"{summary['tasks'][t]:.2f}" if t in summary["tasks"] else "-" for t in TASKS]
        assert cells == [*expected, f"{summary['overall']:.2f}"]  # the 8 tasks, then Overall_acc
    assert re.search(r"- not-a-model: exit status 2: model_name: .*not-a-model: no config\.json", table)
    csv = table_file.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("Model,obj_appearance_order,") and len(csv) == 3

    # A checkpoint of the sweep resumes alone, from its own config.json.
    shard = run_b / "shards" / "shard_0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:3]))
    expected = read_results(run_b)
    assert eval_qwen.main(eval_qwen.EvalConfig(), ["--resume", str(run_b)]) == 0
    assert read_results(run_b) == expected


@pytest.mark.e2e
def test_the_main_config_and_the_command_line_give_lists(tmp_path, capsys):
    from vsibench_eval.settings.config import EvalConfig, parse_config

    config, _ = parse_config(EvalConfig(model_name=["/ckpt/a", "/ckpt/b"]), [])
    assert config.model_name == ["/ckpt/a", "/ckpt/b"] and is_sweep(config.model_name)
    config, given = parse_config(EvalConfig(), ["--model_name", "/ckpt/a", "/ckpt/b"])
    assert config.model_name == ["/ckpt/a", "/ckpt/b"] and "model_name" in given
    config, _ = parse_config(EvalConfig(), ["--model_name", "/ckpt/a"])
    assert not is_sweep(config.model_name)
    # A sweep is refused as a whole, before any checkpoint, when its data is missing.
    argv = ["--model_name", "/ckpt/a", "/ckpt/b", "--parquet_file", str(tmp_path / "absent.parquet")]
    assert eval_qwen.main(eval_qwen.EvalConfig(), [*argv, "--output_dir_base", str(tmp_path / "runs")]) == 2
    assert "absent.parquet: data file not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
