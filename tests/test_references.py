"""Published rows beside ours (scoring/references.csv): the file's own consistency, matching a run's protocol and
model, differences and interval marks, and `--reference` on the scoring command, the log and the sweep table."""

import csv
import io
import json
import logging
import re

import pytest

from vsibench_eval.errors import DataError
from vsibench_eval.metric import TASKS
from vsibench_eval.run_dir.directory import log_references
from vsibench_eval.running.sweep import report_sweep
from vsibench_eval.scoring import report
from vsibench_eval.scoring.references import (
    COLUMNS,
    REFERENCES_FILE,
    compare_with,
    is_model,
    load_references,
    model_lines,
)
from vsibench_eval.settings.config import EvalConfig
from vsibench_eval.settings.protocols import PROTOCOLS

# Questions per task in the full VSI-Bench (shared facts: 5,130 questions; object_rel_direction = easy 217 +
# medium 378 + hard 373), to recompute a question-weighted overall from published task scores.
TASK_QUESTIONS = {
    "obj_appearance_order": 618,
    "object_abs_distance": 834,
    "object_counting": 565,
    "object_rel_distance": 710,
    "object_size_estimation": 953,
    "room_size_estimation": 288,
    "route_planning": 194,
    "object_rel_direction": 968,
}
ZERO_SHOT = "Qwen2.5-VL-7B (zero-shot)"


# ---------------------------------------------------------------- the file


def test_every_row_has_a_source_a_known_protocol_and_a_consistent_overall():
    references = load_references()
    assert len(references) >= 30
    assert {r["protocol"] for r in references} <= {*PROTOCOLS, "unknown"}
    for reference in references:
        assert reference["source"].startswith("https://github.com/"), reference["model"]
        if len(reference["tasks"]) < len(TASKS):
            continue
        values = reference["tasks"]
        macro = sum(values.values()) / len(values)
        micro = sum(values[t] * n for t, n in TASK_QUESTIONS.items()) / sum(TASK_QUESTIONS.values())
        if reference["overall_kind"] == "macro":  # published rounded to 1 or 2 decimals, tasks too
            assert reference["overall"] == pytest.approx(macro, abs=0.06), reference["model"]
        if reference["overall_kind"] == "micro":
            assert reference["overall"] == pytest.approx(micro, abs=0.01), reference["model"]
    spatial_r1 = next(r for r in references if r["model"].startswith("Spatial-R1"))
    assert spatial_r1["overall_kind"] == "micro" and spatial_r1["overall"] == 41.81  # its macro would be 40.20


def test_a_bad_row_names_the_file_row_and_field(tmp_path):
    rows = list(csv.reader(REFERENCES_FILE.open()))
    rows[3][COLUMNS.index("route_planning")] = "29,38"
    path = tmp_path / "references.csv"
    path.write_text("".join(",".join(f'"{cell}"' for cell in row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"references.csv: row 4: route_planning: not a number: '29,38'"):
        load_references(path)


# ---------------------------------------------------------------- matching and differences


def summary_with(tasks: dict, overall: float, micro: float, ci_half: float = 2.0) -> dict:
    return {
        "tasks": tasks,
        "overall": overall,
        "micro": micro,
        "ci": {
            "tasks": {task: [v - ci_half, v + ci_half] for task, v in tasks.items()},
            "overall": [overall - ci_half, overall + ci_half],
            "micro": [micro - ci_half, micro + ci_half],
        },
        "bootstrap": {"resamples": 2000, "seed": 0, "unit": "video"},
    }


def test_differences_and_interval_marks_against_a_macro_and_a_micro_overall():
    references = {r["model"]: r for r in load_references()}
    ours = summary_with({"route_planning": 30.0, "object_counting": 40.0}, overall=35.0, micro=42.0)
    zero_shot = compare_with(ours, references[ZERO_SHOT])
    assert set(zero_shot["tasks"]) == {"route_planning", "object_counting"}  # the tasks both have
    assert zero_shot["tasks"]["route_planning"] == pytest.approx(
        {"ours": 30.0, "published": 29.38, "diff": 0.62, "inside": True}
    )
    assert zero_shot["tasks"]["object_counting"]["inside"] is False  # 33.96 outside [38, 42]
    assert zero_shot["overall"]["diff"] == pytest.approx(35.0 - 34.43) and zero_shot["overall"]["kind"] == "overall"
    spatial_r1 = compare_with(ours, next(r for k, r in references.items() if k.startswith("Spatial-R1")))
    assert spatial_r1["overall"]["kind"] == "micro"  # 41.81 is a question-weighted mean: against our micro
    assert spatial_r1["overall"]["diff"] == pytest.approx(42.0 - 41.81) and spatial_r1["overall"]["inside"]


def test_a_run_is_matched_to_its_model_by_hub_id_or_folder_name():
    zero_shot = next(r for r in load_references() if r["model"] == ZERO_SHOT)
    assert is_model(zero_shot, "Qwen/Qwen2.5-VL-7B-Instruct")
    assert is_model(zero_shot, "/models/qwen2.5-vl-7b-instruct/")
    assert not is_model(zero_shot, "Qwen/Qwen2.5-VL-3B-Instruct") and not is_model(zero_shot, "")


def test_the_log_prints_the_runs_model_after_its_table(caplog):
    ours = summary_with({task: 30.0 for task in TASKS}, overall=33.0, micro=34.0)
    config = EvalConfig(model_name="Qwen/Qwen2.5-VL-7B-Instruct", protocol="spatial_r1")
    log = logging.getLogger("test_references")
    with caplog.at_level(logging.INFO, logger="test_references"):
        log_references(config, ours, log)
    lines = [record.getMessage() for record in caplog.records]
    zero_shot = next(line for line in lines if line.startswith(f"published {ZERO_SHOT} "))
    assert "overall (macro) 34.43, ours 33.00, difference -1.43, inside our 95% interval" in zero_shot
    assert "SpaceR/blob/fb282b3" in zero_shot  # its source
    easi = [line for line in lines if "protocol lmms_eval" in line]
    assert easi and all("not comparable with this run's protocol spatial_r1" in line for line in easi)
    assert not any(line.startswith("published rows:") for line in lines)  # the full section needs `reference`
    assert model_lines(ours, "some/other-model", "spatial_r1", load_references()) == []


# ---------------------------------------------------------------- the scoring command


def run_records(route_right: int) -> list[dict]:
    """8 route-planning questions over 4 videos, the first `route_right` right, and 8 counting ones all right."""
    records = []
    for i in range(16):
        route = i < 8
        records.append(
            {
                "id": i,
                "dataset": "scannet",
                "scene_name": f"scene{i % 4}",
                "question_type": "route_planning" if route else "object_counting",
                "prediction": ("A" if i < route_right else "B") if route else "3",
                "ground_truth": "A" if route else "3",
                "options": ["A. left", "B. right"] if route else None,
                "error": None,
            }
        )
    return records


def write_run(folder, records, **config) -> str:
    folder.mkdir(parents=True)
    (folder / "vsibench_results_default.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder / "vsibench_results_default.jsonl")


def test_markdown_reference_shows_the_same_protocol_with_differences_and_the_others_apart(tmp_path, capsys):
    path = write_run(tmp_path / "run", run_records(2), model_name="/m/my-model", protocol="spatial_r1")
    assert report.main([path, "--markdown", "--reference"]) == 0
    out = capsys.readouterr().out
    ours, comparable = out.split("Published under the same protocol (spatial_r1):")
    comparable, others = comparable.split("Not comparable")
    assert "| my-model |" in ours and "25.00" in ours  # our row: route planning 2 of 8
    zero_shot = next(line for line in comparable.splitlines() if line.startswith(f"| {ZERO_SHOT} ["))
    assert "29.38" in zero_shot and "34.43" in zero_shot
    differences = comparable.splitlines()[comparable.splitlines().index(zero_shot) + 1]
    assert differences.startswith("| my-model - published")
    assert "-4.38" in differences  # route planning 25.00 - 29.38
    assert "+66.04 out" in differences  # counting 100.00 - 33.96, far outside [100, 100]
    assert "bootstrap of whole videos within each dataset" in comparable
    assert "InternVL2-8B" in others and "vsibench_official" in others and "InternVL2-8B" not in comparable
    assert "Sources:" in out and "thinking-in-space" in out


def test_csv_reference_rows(tmp_path, capsys):
    path = write_run(tmp_path / "run", run_records(2), model_name="/m/my-model", protocol="spatial_r1")
    assert report.main([path, "--csv", "--reference"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))  # one table: ours, then the published rows
    assert rows[0]["Model"] == "my-model" and rows[0]["row"] == "ours" and rows[0]["protocol"] == "spatial_r1"
    assert rows[0]["route_planning"] == "25.00" and rows[0]["questions"] == "16"
    pair = f"my-model - {ZERO_SHOT}"
    difference = next(r for r in rows if r["Model"] == pair and r["row"] == "difference")
    assert float(difference["route_planning"]) == pytest.approx(-4.38)
    inside = next(r for r in rows if r["Model"] == pair and r["row"].startswith("inside"))
    assert inside["object_counting"] == "no" and inside["obj_appearance_order"] == ""  # no questions of it here
    assert {r["row"] for r in rows if r["protocol"] == "vsibench_official"} == {"not comparable"}
    assert all(r["source"] for r in rows[1:])


def test_reference_without_a_config_says_the_protocol_is_unknown(tmp_path, capsys):
    path = write_run(tmp_path / "bare", run_records(4))
    assert report.main([path, "--reference"]) == 0  # the text table
    out = capsys.readouterr().out
    assert "No published row is comparable: the protocol of bare is unknown" in out and "Not comparable" in out
    with pytest.raises(SystemExit) as exit_info:
        report.main([path, "--json", "--reference"])
    assert exit_info.value.code == 2 and "--reference goes with the tables" in capsys.readouterr().err


def test_sweep_table_with_reference(tmp_path, capsys):
    outcomes = []
    for number, right in enumerate((2, 6)):
        run_dir = tmp_path / f"run{number}"
        run_dir.mkdir()
        records = run_records(right)
        summary = report.summarize(records) | {"complete": True, "protocol": "spatial_r1"}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        outcomes.append({"status": 0, "run_dir": str(run_dir)})
    config = EvalConfig(output_dir_base=str(tmp_path / "out"), reference=True)
    report_sweep(config, ["a", "b"], outcomes)
    out = capsys.readouterr().out
    assert "Published under the same protocol (spatial_r1):" in out
    assert "| a - published" in out and "| b - published" in out
    (written,) = (tmp_path / "out").glob("sweep_*.csv")
    rows = list(csv.DictReader(written.open()))
    assert [r["Model"] for r in rows[:2]] == ["a", "b"]
    difference = next(r for r in rows if r["Model"] == f"b - {ZERO_SHOT}" and r["row"] == "difference")
    assert float(difference["route_planning"]) == pytest.approx(75.0 - 29.38)


@pytest.mark.e2e
def test_reference_in_the_log_and_on_the_command_line_of_a_demo_run(demo_run, capsys):
    run_dir = demo_run("qwen2_5_vl", "--protocol", "lmms_eval", "--reference", "--debug_mode", "--debug_size", "8")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bootstrap"]["unit"] == "video" and "micro" in summary["ci"] and summary["ci"]["datasets"]
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert "95% CI: bootstrap of whole videos within each dataset" in log
    after_table = log[log.index("published rows:") :]
    assert "Published under the same protocol (lmms_eval):" in after_table and "Not comparable" in after_table
    assert "| model - published" in after_table  # the demo checkpoint's folder is named model
    assert report.main([str(run_dir / "vsibench_results_default.jsonl"), "--markdown", "--reference"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| Model |") and "| model " in out.splitlines()[2]  # our row first
    assert "Published under the same protocol (lmms_eval):" in out
    difference = next(line for line in out.splitlines() if line.startswith("| model - published"))
    assert re.search(r"\| +[+-]\d+\.\d\d (in|out) \|", difference)  # a difference with its interval mark
    assert out.index("Qwen3-VL-2B [") < out.index("Not comparable") < out.index("InternVL2-8B [")
