"""What a resume finds in a run directory and cannot trust: shard records with malformed fields (refused, naming
file, line and field), a deleted shards/ folder (made again, its questions answered again)."""

import json
import shutil

import pytest
from helpers import SMALL, read_results

import eval_qwen
from vsibench_eval.settings.config import EvalConfig

MISSING = object()  # the field is removed from the record


def finished_copy(demo_run, tmp_path):
    """A copy of the small finished demo run, to damage."""
    run_dir = tmp_path / "run"
    shutil.copytree(demo_run("qwen2_5_vl", *SMALL), run_dir)
    return run_dir


@pytest.mark.e2e
@pytest.mark.parametrize(
    "field, value, why",
    [
        ("error", MISSING, "field error: missing"),
        ("question_type", "object_colour", "field question_type: 'object_colour' in the record"),
        ("prediction", 3, "field prediction: expected text, got int 3"),
        ("prediction", None, "field prediction: expected text, got NoneType None"),
        ("error", ["decode"], "field error: expected text or null, got list ['decode']"),
    ],
    ids=["no-error", "unknown-type", "number-prediction", "null-prediction", "list-error"],
)
def test_a_malformed_record_is_refused_naming_file_line_and_field(demo_run, tmp_path, capsys, field, value, why):
    run_dir = finished_copy(demo_run, tmp_path)
    shard = run_dir / "shards" / "shard_0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    record = json.loads(lines[1])
    if value is MISSING:
        del record[field]
    else:
        record[field] = value
    lines[1] = json.dumps(record) + "\n"
    shard.write_text("".join(lines))
    results = (run_dir / "vsibench_results_default.jsonl").read_text()
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 2
    assert f"{shard}: line 2: id {record['id']}: {why}" in capsys.readouterr().err
    assert shard.read_text() == "".join(lines)  # nothing cut, nothing appended
    assert (run_dir / "vsibench_results_default.jsonl").read_text() == results  # nothing merged


@pytest.mark.e2e
def test_a_deleted_shards_folder_is_made_again_on_resume(demo_run, tmp_path):
    run_dir = finished_copy(demo_run, tmp_path)
    reference = read_results(run_dir)
    shutil.rmtree(run_dir / "shards")
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 0
    assert read_results(run_dir) == reference  # every question answered again, as in the first run
    assert "shards: missing; made again" in (run_dir / "vsibench_eval_default.log").read_text()
