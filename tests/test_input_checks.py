"""Input that must be refused with a message (exit 2, no traceback, no run directory, no model loaded), and the
well-known alternative forms that must be read correctly."""

import json
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import eval_qwen
from vsibench_eval.errors import DataError
from vsibench_eval.inputs.cogmap import load_offloaded_maps
from vsibench_eval.inputs.prompts import load_prompt_template
from vsibench_eval.inputs.questions import load_questions, read_ids
from vsibench_eval.scoring import report
from vsibench_eval.settings.config import EvalConfig

ROOT = Path(__file__).resolve().parent.parent
CHOICE_ROW = {
    "id": 5,
    "dataset": "scannet",
    "scene_name": "scene0011_00",
    "question_type": "object_rel_distance",
    "question": "Which is closest?",
    "ground_truth": "B",
    "options": ["A. tv", "B. bed"],
}
NUMBER_ROW = CHOICE_ROW | {"id": 6, "question_type": "object_counting", "ground_truth": "3", "options": None}


def run_on_rows(demo, tmp_path, rows, *flags) -> int:
    """eval_qwen.main on a parquet of `rows` with the demo's model and videos."""
    data_file = tmp_path / "data.parquet"
    pd.DataFrame(rows).to_parquet(data_file)
    argv = [
        "--parquet_file",
        str(data_file),
        "--video_dir",
        str(demo / "vsibench"),
        "--model_name",
        str(demo / "model"),
    ]
    return eval_qwen.main(EvalConfig(output_dir_base=str(tmp_path / "runs")), [*argv, *flags])


@pytest.mark.e2e
@pytest.mark.parametrize(
    "row, column, why",
    [
        (CHOICE_ROW | {"options": "A. tv, B. bed"}, "options", "one string that is neither a JSON list nor one option"),
        (CHOICE_ROW | {"options": "[A. tv, B. bed]"}, "options", "starts like a JSON list but is not one"),
        (CHOICE_ROW | {"ground_truth": "C"}, "ground_truth", "'C' is not one of the options' letters (A, B)"),
        (CHOICE_ROW | {"ground_truth": "bed"}, "ground_truth", "'bed' is not one of the options' letters (A, B)"),
        (NUMBER_ROW | {"ground_truth": "nan"}, "ground_truth", "not a finite number: 'nan'"),
        (NUMBER_ROW | {"ground_truth": "inf"}, "ground_truth", "not a finite number: 'inf'"),
        (NUMBER_ROW | {"id": 6.5}, "id", "not an integer: 6.5"),
        (NUMBER_ROW | {"dataset": ".."}, "dataset", "'..' leads outside video_dir"),
        (NUMBER_ROW | {"dataset": "/etc"}, "dataset", "'/etc' leads outside video_dir"),
        (NUMBER_ROW | {"scene_name": "../../secret"}, "scene_name", "'../../secret' leads outside video_dir"),
    ],
    ids=[
        "options-one-line",
        "options-broken-json",
        "letter-not-an-option",
        "answer-text-not-letter",
        "nan-truth",
        "inf-truth",
        "fractional-id",
        "dotdot-dataset",
        "absolute-dataset",
        "dotdot-scene",
    ],
)
def test_bad_rows_are_refused_before_any_model_loads(demo_dirs, tmp_path, capsys, row, column, why):
    demo = demo_dirs("qwen2_5_vl")
    row_id = row["id"]
    assert run_on_rows(demo, tmp_path, [row]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data.parquet'}: row id {row_id}: column '{column}': " in err and why in err
    assert not (tmp_path / "runs").exists()


def test_options_written_as_one_string_are_read_as_a_list(tmp_path):
    rows = [
        CHOICE_ROW | {"id": 1, "options": "A. tv\nB. bed\n"},  # one option per line
        CHOICE_ROW | {"id": 2, "options": '["A. tv", "B. bed"]'},  # a JSON list written as text
        CHOICE_ROW | {"id": 3, "options": np.array(["A. tv", "B. bed"])},  # what parquet's list columns give
        CHOICE_ROW | {"id": 4, "options": ["tv", "bed"]},  # options without letters: A, B by position
        NUMBER_ROW | {"id": 5.0},  # a whole float id (csv, pandas) is the integer
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(to_problem(row)) + "\n" for row in rows))
    questions = load_questions(str(path), "/videos")
    assert [q["options"] for q in questions] == [["A. tv", "B. bed"]] * 3 + [["tv", "bed"], None]
    assert [q["id"] for q in questions] == [1, 2, 3, 4, 5]


def to_problem(row: dict) -> dict:
    """A VSI-Bench-shaped row in Spatial-R1's jsonl format."""
    options = row["options"]
    return {
        "problem_id": row["id"],
        "problem": "Question:\n" + row["question"],
        "problem_type": [row["question_type"]],
        "solution": f"<answer>{row['ground_truth']}</answer>",
        "video_filename": f"{row['dataset']}/{row['scene_name']}.mp4",
        "options": options.tolist() if isinstance(options, np.ndarray) else options,
    }


@pytest.mark.parametrize("video_filename", ["../outside.mp4", "scannet/../../outside.mp4", "/abs/video.mp4"])
def test_video_filenames_leading_outside_video_dir_are_refused(tmp_path, video_filename):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(to_problem(NUMBER_ROW) | {"video_filename": video_filename}) + "\n")
    with pytest.raises(DataError, match=f"row id 6: column 'video_filename': '{video_filename}' leads outside"):
        load_questions(str(path), "/videos")


LATIN1_JSON = '[{"problem_id": 1, "problem": "caf\xe9"}]'.encode("latin-1")


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("data.parquet", b"", "data.parquet: cannot read the table (ArrowInvalid: "),
        ("data.parquet", b"PAR1 not a parquet file", "data.parquet: cannot read the table (ArrowInvalid: "),
        ("data.json", LATIN1_JSON, "data.json: not UTF-8 text (byte 35)"),
        ("data.json", b'[{"problem_id": 1}, 2]', "data.json: row 2: expected an object of columns, got int 2"),
        ("data.jsonl", b'"a question"\n', "data.jsonl: row 1: expected an object of columns, got str 'a question'"),
    ],
    ids=["empty-parquet", "corrupt-parquet", "latin1-json", "row-not-object", "jsonl-row-not-object"],
)
def test_unreadable_data_files_name_the_file_and_row(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as refused:
        load_questions(str(tmp_path / name), "/videos")
    assert str(refused.value).startswith(f"{tmp_path / name}: ") and needle in str(refused.value)
    with pytest.raises(DataError) as refused:  # the same file given as offloaded cognitive maps
        load_offloaded_maps(str(tmp_path / name), "problem_id", "problem")
    assert str(refused.value).startswith(f"{tmp_path / name}: ") and needle in str(refused.value)


def test_an_ids_file_that_is_not_utf8_is_refused(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"1\n2\xff\n")
    with pytest.raises(DataError, match=f"^{ids}: not UTF-8 text \\(byte 4\\)$"):
        read_ids(str(ids))


def test_a_template_that_is_not_utf8_is_refused(tmp_path):
    template = tmp_path / "template.yaml"
    template.write_bytes("pre_prompt: caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"prompt_template_file: {template}: not UTF-8 text \\(byte 16\\)"):
        load_prompt_template(str(template))


@pytest.mark.e2e
def test_a_question_type_stored_as_a_list_is_refused(demo_dirs, tmp_path, capsys):
    row = NUMBER_ROW | {"question_type": ["object_counting"]}  # a parquet list column, read back as an array
    demo = demo_dirs("qwen2_5_vl")
    assert run_on_rows(demo, tmp_path, [row]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data.parquet'}: row id 6: column 'question_type': expected one question type as text" in err
    assert not (tmp_path / "runs").exists()
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    argv = ["--parquet_file", str(empty), "--video_dir", str(demo / "vsibench"), "--model_name", str(demo / "model")]
    assert eval_qwen.main(EvalConfig(output_dir_base=str(tmp_path / "runs")), argv) == 2
    assert f"error: {empty}: cannot read the table" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--fps", "nan"], "fps: expected a number >= 0 (0: no cap), got nan"),
        (["--fps", "-1"], "fps: expected a number >= 0 (0: no cap), got -1.0"),
        (["--position_fps", "inf"], "position_fps: expected a positive number, 'sampled' or 'metadata', got 'inf'"),
        (["--position_fps", "nan"], "position_fps: expected a positive number, 'sampled' or 'metadata', got 'nan'"),
        (["--num_processes", "0"], "num_processes: must be at least 1, got 0"),
    ],
)
def test_bad_settings_exit_2_and_leave_no_run_directory(demo_dirs, tmp_path, capsys, flags, needle):
    assert run_on_rows(demo_dirs("qwen2_5_vl"), tmp_path, [NUMBER_ROW], *flags) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def demo_run_dir(demo: Path, run_dir: Path) -> Path:
    """A run directory, as a new run on the demo leaves it before any answer."""
    config = EvalConfig(
        parquet_file=str(demo / "vsibench" / "test.parquet"),
        video_dir=str(demo / "vsibench"),
        model_name=str(demo / "model"),
        run_dir=str(run_dir),
    )
    (run_dir / "shards").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config)))
    return run_dir


@pytest.mark.e2e
@pytest.mark.parametrize(
    "content, needle",
    [
        ("", "not valid JSON"),
        ('{"num_frames": 8', "not valid JSON"),
        ("[1, 2]", "expected a JSON object of settings, got list"),
        ('{"num_frames": "eight"}', "field num_frames: 'eight' is not of type int | None"),
        ('{"prompt_type": "verbose"}', "field prompt_type: 'verbose' is not of type"),
        ('{"target_resolution": [448, "wide"]}', "field target_resolution: [448, 'wide'] is not of type"),
        ('{"colour": "red"}', "unknown field(s) colour"),
    ],
    ids=["empty", "truncated", "not-an-object", "wrong-type", "unknown-choice", "wrong-item-type", "unknown-field"],
)
def test_a_bad_saved_config_is_refused_on_resume(tmp_path, capsys, content, needle):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(content)
    assert eval_qwen.main(EvalConfig(), ["--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: resume: {tmp_path / 'run' / 'config.json'}: ") and needle in err


@pytest.mark.e2e
def test_a_shard_with_bytes_that_are_not_utf8_is_refused_on_resume(demo_dirs, tmp_path, capsys):
    run_dir = demo_run_dir(demo_dirs("qwen2_5_vl"), tmp_path / "run")
    shard = run_dir / "shards" / "shard_0.jsonl"
    shard.write_bytes(b'{"id": 0}\n{"id": 1, "prediction": "caf\xe9"}\n{"id": 2}\n')
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 2
    assert f"{shard}: line 2: not UTF-8 text" in capsys.readouterr().err
    assert shard.read_bytes().endswith(b'{"id": 2}\n')  # nothing cut, nothing written


@pytest.mark.e2e
def test_run_dir_must_be_new_empty_or_a_run(demo_dirs, tmp_path, capsys):
    demo = demo_dirs("qwen2_5_vl")
    foreign = tmp_path / "foreign"
    (foreign / "shards").mkdir(parents=True)
    (foreign / "shards" / "shard_0.jsonl").write_text('{"id": 0}\n')  # another run's shard, without its config
    assert run_on_rows(demo, tmp_path, [NUMBER_ROW], "--run_dir", str(foreign)) == 2
    assert f"run_dir: {foreign} is not empty (shards) and holds no run (no config.json)" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["shards"]  # left as it was

    held = tmp_path / "Bob's run"  # a printed resume command must paste into a shell as it is
    held.mkdir()
    (held / "config.json").write_text("{}")
    assert run_on_rows(demo, tmp_path, [NUMBER_ROW], "--run_dir", str(held)) == 2
    hint = capsys.readouterr().err.split("continue it with ")[1]
    assert shlex.split(hint) == ["--resume", str(held)]

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert run_on_rows(demo, tmp_path, [NUMBER_ROW], "--output_dir_base", str(blocked)) == 2
    assert f"cannot create the run directory in {blocked / 'model'}: Not a directory" in capsys.readouterr().err


@pytest.mark.e2e
def test_offloaded_maps_from_nested_parquet_columns_are_refused(demo_dirs, tmp_path, capsys):
    maps = tmp_path / "maps.parquet"
    pd.DataFrame({"id": [6], "cognitive_map": [[[1, 2], [3, 4]]]}).to_parquet(maps)  # a list<list<int>> column
    with pytest.raises(DataError, match="row 1: column 'cognitive_map': a ndarray value"):
        load_offloaded_maps(str(maps), "id", "cognitive_map")
    flags = ["--use_cognitive_map", "--offload_cogmap", "--cogmap_file_path", str(maps)]
    assert run_on_rows(demo_dirs("qwen2_5_vl"), tmp_path, [NUMBER_ROW], *flags) == 2
    assert "store each map as JSON text" in capsys.readouterr().err
    as_text = tmp_path / "maps.jsonl"  # the same map as a JSON object in a jsonl file is read
    as_text.write_text(json.dumps({"id": 6, "cognitive_map": {"chair": [[1, 2], [3, 4]]}}) + "\n")
    assert load_offloaded_maps(str(as_text), "id", "cognitive_map") == {"6": '{"chair": [[1, 2], [3, 4]]}'}


RESULT = {"question_type": "object_counting", "prediction": "3", "ground_truth": "3"}


def scorer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "vsibench_acc.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_scorer_refuses_bytes_that_are_not_utf8_and_duplicate_ids(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_bytes(json.dumps(RESULT | {"id": 1}).encode() + b'\n{"id": 2, "prediction": "\xff"}\n')
    done = scorer(str(results))
    assert done.returncode == 2 and done.stderr == f"error: {results}: line 2: not UTF-8 text (byte 26)\n"
    results.write_text("".join(json.dumps(RESULT | {"id": i}) + "\n" for i in (1, 2, 1)))
    done = scorer(str(results), "--json")
    assert done.returncode == 2 and done.stderr == f"error: {results}: record 3: id 1 already in record 1\n"


def test_scorer_refuses_an_empty_file_and_an_id_written_twice_differently(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("")
    done = scorer(str(results))
    assert done.returncode == 2 and done.stderr == f"error: {results}: no records (an empty results file)\n"
    results.write_text(json.dumps(RESULT | {"id": 0}) + "\n" + json.dumps(RESULT | {"id": "0"}) + "\n")
    done = scorer(str(results), "--json")
    assert done.returncode == 2 and done.stderr == f"error: {results}: record 2: id '0' already in record 1\n"


@pytest.mark.parametrize(
    "name, needle",
    [
        ("missing-folder/tasks.png", "cannot write the plot (no such directory"),
        ("tasks.xyz", "tasks.xyz: unknown extension '.xyz'; a plot can be written as "),
        ("tasks", "tasks: no extension; a plot can be written as "),
    ],
)
def test_a_plot_that_cannot_be_written_exits_2(tmp_path, capsys, name, needle):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(RESULT | {"id": 1}) + "\n")
    assert report.main([str(results), "--plot", str(tmp_path / name)]) == 2
    assert needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
