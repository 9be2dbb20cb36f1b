"""What a report hands the reader: N-run markdown and CSV tables in the published layouts, run labels from each
run's config.json, the plots (B - A with paired intervals; per-task bars), the lmms-eval export and wandb."""

import csv
import io
import json
import re
import sys

import pandas as pd
import pytest

from vsibench_eval.errors import DataError
from vsibench_eval.running.prepare import prepare
from vsibench_eval.scoring import report
from vsibench_eval.scoring.lmms_export import sanitized_model_name
from vsibench_eval.scoring.plots import difference_rows
from vsibench_eval.scoring.report import chance_levels, compare_runs, join_on_id
from vsibench_eval.scoring.tables import MARKDOWN_HEADER, distinct_labels, format_csv, format_markdown
from vsibench_eval.settings.config import EvalConfig

OPTIONS = {2: ["A. left", "B. right"], 3: ["A. left", "B. right", "C. back"], 4: ["A. a", "B. b", "C. c", "D. d"]}


def rec(qid, qtype, prediction, gt, options=4, error=None):
    return {
        "id": qid,
        "dataset": "scannet",
        "scene_name": f"scene{qid % 3}",
        "question_type": qtype,
        "question": f"question {qid}?",
        "options": OPTIONS[options] if options else None,
        "ground_truth": gt,
        "prompt": f"These are frames of a video.\nquestion {qid}?",
        "prediction": prediction,
        "error": error,
    }


def write_run(folder, records, model_name=None, **config):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vsibench_results_default.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if model_name:
        (folder / "config.json").write_text(json.dumps({"model_name": model_name, **config}))
    return str(path)


def result(overall, tasks, n=10):
    return {"overall": overall, "tasks": tasks, "n": n, "failed": 0, "parser": "official"}


# ---------------------------------------------------------------- N-run tables


def test_markdown_in_the_paper_layout_exact():
    rows = [
        ("base", result(45.0, {"object_counting": 40.0, "route_planning": 50.0})),
        ("rl", result(55.0, {"object_counting": 60.0, "route_planning": 50.0})),  # route planning: a tie
    ]
    expected = [
        "| Model |      Avg. | Obj. Count | Abs. Dist. | Obj. Size | Room Size | Rel. Dist. | Rel. Dir. | Route Plan "
        "| Appr. Order |",
        "|-------|----------:|-----------:|-----------:|----------:|----------:|-----------:|----------:|-----------:"
        "|------------:|",
        "| base  |     45.00 |      40.00 |          - |         - |         - |          - |         - |  **50.00** "
        "|           - |",
        "| rl    | **55.00** |  **60.00** |          - |         - |         - |          - |         - |  **50.00** "
        "|           - |",
        "",
        "Percent; Avg. is the macro mean of the task scores; parser: official. Bold: the best in each column.",
    ]
    assert format_markdown(rows, "paper").splitlines() == expected


def test_markdown_in_spatial_r1_layout_one_run():
    lines = format_markdown([("run-7", result(75.0, {"object_counting": 100.0, "route_planning": 50.0}))]).splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        cell.strip() for cell in MARKDOWN_HEADER.strip("|").split("|")
    ]
    assert lines[1].startswith("|-------|") and lines[1].count("-:|") == 9  # every score column right-aligned
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells == ["run-7", "-", "-", "100.00", "-", "-", "-", "50.00", "-", "75.00"]  # one run: nothing bolded
    assert len({len(line) for line in lines[:3]}) == 1  # padded: the raw text lines up too


def test_generic_question_types_get_columns_of_their_own():
    rows = [("r1", result(70.0, {"multiple choice": 50.0, "numerical": 90.0}))]
    assert format_markdown(rows).splitlines()[0].split("|")[2:-1] == [
        " multiple choice ",
        " numerical ",
        " Overall_acc ",
    ]


def test_csv_holds_the_same_numbers():
    rows = [
        ("base", result(45.0, {"object_counting": 40.0}, n=12)),
        ("rl", result(55.126, {"object_counting": 60.0, "room_size_estimation": 12.5}, n=12)),
    ]
    table = list(csv.reader(io.StringIO(format_csv(rows, "paper"))))
    assert table[0][:4] == ["Model", "Avg.", "Obj. Count", "Abs. Dist."] and table[0][-2:] == ["questions", "parser"]
    assert table[1] == ["base", "45.00", "40.00", "", "", "", "", "", "", "", "12", "official"]
    assert table[2][:6] == ["rl", "55.13", "60.00", "", "", "12.50"]


def test_names_cannot_break_a_markdown_row_or_become_a_spreadsheet_formula():
    names = ["a|b\nc", '=HYPERLINK("x")', "-1.5", "+cmd", "@SUM(A1)", "-run"]
    rows = [(name, result(50.0, {"object_counting": 50.0})) for name in names]
    markdown = format_markdown(rows).splitlines()
    assert markdown[2].startswith("| a\\|b c ") and len({len(line) for line in markdown[:8]}) == 1
    assert [len(re.findall(r"(?<!\\)\|", line)) for line in markdown[:8]] == [11] * 8  # 10 cells a row, none split
    table = list(csv.reader(io.StringIO(format_csv(rows))))
    assert [row[0] for row in table[1:]] == ["a|b\nc", '\'=HYPERLINK("x")', "-1.5", "'+cmd", "'@SUM(A1)", "'-run"]


def test_labels_use_as_much_of_the_checkpoint_path_as_tells_runs_apart():
    paths = [["ckpt", "a", "checkpoint-500"], ["ckpt", "b", "checkpoint-500"], ["Qwen", "Qwen2.5-VL-7B-Instruct"]]
    folders = ["f1", "f2", "f3"]
    assert distinct_labels(paths, folders) == ["a/checkpoint-500", "b/checkpoint-500", "Qwen2.5-VL-7B-Instruct"]
    assert distinct_labels([["x", "m"], ["m"]], folders[:2]) == ["x/m", "m"]
    assert distinct_labels([["ckpt", "m"], ["ckpt", "m"]], folders[:2]) == ["ckpt/m (f1)", "ckpt/m (f2)"]


def test_cli_n_runs_one_row_each_named_from_config_json(tmp_path, capsys):
    base = [rec(i, "route_planning", "A" if i < 2 else "B", "A") for i in range(4)]  # 50
    better = [rec(i, "route_planning", "A" if i < 3 else "B", "A") for i in range(4)]  # 75
    paths = [
        write_run(tmp_path / "a" / "20261126_130446", base, "/ckpt/exp1/checkpoint-500"),
        write_run(tmp_path / "b" / "20261126_140000", better, "/ckpt/exp2/checkpoint-500"),
        write_run(tmp_path / "c" / "20261126_150000", base, "Qwen/Qwen2.5-VL-7B-Instruct"),
        write_run(tmp_path / "bare", base),  # no config.json: the folder's name
    ]
    assert report.main([*paths, "--markdown"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()[2:6]]
    assert [row[0] for row in rows] == ["exp1/checkpoint-500", "exp2/checkpoint-500", "Qwen2.5-VL-7B-Instruct", "bare"]
    assert [row[7] for row in rows] == ["50.00", "**75.00**", "50.00", "50.00"]  # route_planning, best bolded
    assert report.main([*paths[:2], "--csv", "--name", "Base"]) == 0
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()] == [
        "Model",
        "Base",
        "exp2/checkpoint-500",
    ]
    assert report.main([*paths[:2], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(o["name"], o["file"], o["overall"]) for o in out] == [
        ("exp1/checkpoint-500", paths[0], 50.0),
        ("exp2/checkpoint-500", paths[1], 75.0),
    ]
    with pytest.raises(SystemExit) as exit_info:
        report.main([paths[0], paths[1], "--compare", paths[2]])
    assert exit_info.value.code == 2 and "--compare takes one run A" in capsys.readouterr().err


def test_cli_compare_markdown_keeps_folder_names(tmp_path, capsys):
    a = write_run(tmp_path / "qwen-base", [rec(1, "route_planning", "B", "A")])
    b = write_run(tmp_path / "qwen-rl", [rec(1, "route_planning", "A", "A")])
    assert report.main([a, "--compare", b, "--markdown"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| qwen-base |") and rows[3].startswith("| qwen-rl   |")
    assert rows[3].endswith("|     **100.00** |                    - |  **100.00** |")


# ---------------------------------------------------------------- plots


def test_chance_level_is_one_over_the_options_averaged_like_the_scores():
    records = [
        rec(1, "object_rel_direction_easy", "A", "A", options=2),  # 1/2
        rec(2, "object_rel_direction_medium", "A", "A", options=3),  # 1/3
        rec(3, "object_rel_direction_hard", "A", "A", options=4),  # 1/4
        rec(4, "object_rel_direction_hard", "A", "A", options=4),
        rec(5, "route_planning", "A", "A", options=4),
        rec(6, "route_planning", "A", "A", options=2),
        rec(7, "object_counting", "3", "3", options=None),  # numerical: no chance level
    ]
    chance = chance_levels(records)
    assert chance == {
        "route_planning": pytest.approx(100 * (1 / 4 + 1 / 2) / 2),
        "object_rel_direction": pytest.approx(100 * (1 / 2 + 1 / 3 + 1 / 4) / 3),  # 36.1, as the paper's table
    }


def runs_with_one_real_difference():
    """A and B agree on counting; B is right on 12 more of 40 route-planning questions."""
    a = [rec(i, "route_planning", "A" if i < 10 else "B", "A") for i in range(40)]
    b = [rec(i, "route_planning", "A" if i < 22 else "B", "A") for i in range(40)]
    counting = [rec(100 + i, "object_counting", p, "10", options=None) for i, p in enumerate(["10", "5", "8", "10"])]
    return a + counting, b + counting


def test_difference_rows_mark_what_the_paired_test_says():
    comparison = compare_runs(*join_on_id(*runs_with_one_real_difference()))
    rows = {row["label"]: row for row in difference_rows(comparison)}
    assert rows["route_planning"]["diff"] == pytest.approx(30.0) and rows["route_planning"]["excludes_zero"]
    assert rows["object_counting"] == {
        "label": "object_counting", "diff": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False
    }  # fmt: skip
    assert rows["Overall (macro)"]["diff"] == pytest.approx(15.0) and rows["Overall (macro)"]["excludes_zero"]
    assert list(rows) == ["object_counting", "route_planning", "Overall (macro)"]  # published order, overall last


@pytest.mark.parametrize("mode", ["one", "three", "compare"])
def test_cli_plots_even_with_one_resample(tmp_path, capsys, mode):
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    a_records, b_records = runs_with_one_real_difference()
    a, b = write_run(tmp_path / "a", a_records), write_run(tmp_path / "b", b_records)
    png = tmp_path / "plot.png"
    extra = {"one": [], "three": [b, a], "compare": ["--compare", b]}[mode]
    assert report.main([a, *extra, "--plot", str(png), "--json", "--resamples", "1"]) == 0
    json.loads(capsys.readouterr().out)  # stdout is still JSON
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_paths_that_cannot_work_exit_2(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    a = write_run(tmp_path / "a", [rec(1, "route_planning", "A", "A")])
    for path, message in [
        (tmp_path / "plot.xyz", "plot.xyz: unknown extension '.xyz'; a plot can be written as"),
        (tmp_path / "plot", "plot: no extension"),
        (tmp_path / "missing" / "plot.png", "no such directory"),
    ]:
        assert report.main([a, "--plot", str(path)]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""  # refused before any work
    (tmp_path / "taken.png").mkdir()  # found only when writing: the report is printed all the same
    assert report.main([a, "--plot", str(tmp_path / "taken.png")]) == 2
    captured = capsys.readouterr()
    assert "taken.png: cannot write the plot" in captured.err and "route_planning" in captured.out


# ---------------------------------------------------------------- lmms-eval export


def lmms_eval_subscores(samples: list[dict]) -> dict:
    """lmms-eval 0.7.3's vsibench aggregation applied to the exported samples: per question type the mean of
    `accuracy` or `MRA:.5:.95:.05`, object_rel_direction the mean of its three sub-types, overall the mean."""
    docs = pd.DataFrame([sample["vsibench_overall"] for sample in samples])
    means = {}
    for qtype, group in docs.groupby("question_type"):
        column = "accuracy" if group["accuracy"].notna().all() else "MRA:.5:.95:.05"
        means[qtype] = group[column].mean()
    subtypes = [means.pop(f"object_rel_direction_{level}") for level in ("easy", "medium", "hard")]
    means["object_rel_direction"] = sum(subtypes) / 3
    return means | {"overall": sum(means.values()) / len(means)}


def test_export_lmms_eval_files_and_fields(tmp_path, capsys):
    records = [
        *(rec(i, "route_planning", p, "A") for i, p in enumerate(["A", "A", "B", "A. left"])),  # 0.75
        rec(10, "object_counting", "<think>two and one</think><answer>3</answer>", "3", options=None),  # 1.0
        rec(11, "object_counting", "4", "3", options=None),  # 0.4
        rec(20, "object_rel_direction_easy", "A", "A", options=2),  # 1
        rec(21, "object_rel_direction_medium", "B", "A", options=3),  # 0
        rec(22, "object_rel_direction_hard", "", "C", error="video failed: unreadable"),  # failed: 0
        rec(23, "object_rel_direction_hard", "C", "C"),  # hard: 0.5
    ]
    config = {"subset": "debiased", "max_new_tokens": 16, "batch_size": 8}
    path = write_run(tmp_path / "runs" / "20261126_130446", records, "/ckpt/exp/Spatial-R1", **config)
    out = tmp_path / "lmms"
    assert report.main([path, "--export", "lmms_eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == pytest.approx(100 * (0.75 + 0.7 + 0.5) / 3)
    folder = out / "exp__Spatial-R1"
    results = json.loads((folder / "20261126_130446_results.json").read_text())
    samples_file = folder / "20261126_130446_samples_vsibench_debiased.jsonl"  # the task follows the run's subset
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    scores = results["results"]["vsibench_debiased"]
    assert scores["alias"] == "vsibench_debiased"
    assert scores["route_planning_accuracy,none"] == 0.75
    assert scores["object_counting_mra,none"] == pytest.approx(0.7)
    assert scores["object_rel_direction_accuracy,none"] == pytest.approx(0.5, abs=1e-6)
    assert scores["vsibench_overall,none"] == round((0.75 + 0.7 + 0.5) / 3, 6)
    assert scores["object_abs_distance_mra,none"] == "N/A" and scores["vsibench_overall_stderr,none"] == "N/A"
    assert results["n-samples"] == {"vsibench_debiased": {"original": 10, "effective": 10}}
    assert results["model_name"] == "/ckpt/exp/Spatial-R1" and results["config"]["model_args"].startswith("pretrained=")
    assert set(results) >= {
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "task_hashes",
        "date",
        "group_subtasks",
    }
    # the reference's own aggregation over the exported samples gives the exported results
    reference = lmms_eval_subscores(samples)
    assert scores["vsibench_overall,none"] == pytest.approx(reference["overall"], abs=1e-6)
    assert scores["object_rel_direction_accuracy,none"] == pytest.approx(reference["object_rel_direction"], abs=1e-6)
    first, thought = samples[0], samples[4]
    assert (first["doc_id"], first["target"], first["filtered_resps"], first["input"]) == (
        0, "A", "A", "These are frames of a video.\nquestion 0?"
    )  # fmt: skip
    assert "resps" not in first and first["route_planning_accuracy"]["accuracy"] == 1.0
    assert thought["resps"] == "<think>two and one</think><answer>3</answer>" and thought["filtered_resps"] == "3"
    assert (
        thought["object_counting_mra"]["MRA:.5:.95:.05"] == 1.0 and thought["object_counting_mra"]["prediction"] == "3"
    )
    assert samples[8]["vsibench_overall"]["error"] == "video failed: unreadable"
    assert len(first) == len(["doc_id", "target", "filtered_resps", "token_counts", "doc_hash", "input"]) + 9


def test_export_refuses_what_lmms_eval_cannot_hold(tmp_path, capsys):
    generic = [{"id": 1, "question_type": "numerical", "prediction": "3", "ground_truth": "3", "options": None}]
    generic[0] |= {"dataset": "scannet", "scene_name": "scene0"}
    path = write_run(tmp_path / "r", generic)
    assert report.main([path, "--export", "lmms_eval", str(tmp_path / "out")]) == 2
    assert "record 1: question_type 'numerical' is not a VSI-Bench type" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        report.main([path, "--export", "lm_eval", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "unknown format 'lm_eval'" in capsys.readouterr().err


def test_sanitized_model_name_as_lmms_eval_writes_it():
    assert sanitized_model_name("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen__Qwen2.5-VL-7B-Instruct"
    assert sanitized_model_name("/ckpt/runs/exp/checkpoint-500/") == "exp__checkpoint-500"
    assert sanitized_model_name("local-model") == "local-model"


# ---------------------------------------------------------------- wandb


def test_wandb_missing_exits_2_with_the_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    path = write_run(tmp_path / "r", [rec(1, "route_planning", "A", "A")])
    assert report.main([path, "--wandb_project", "vsi"]) == 2
    captured = capsys.readouterr()
    assert "pip install wandb" in captured.err and captured.out == ""
    config = EvalConfig(protocol="none", wandb_project="vsi", video_dir=str(tmp_path))
    with pytest.raises(DataError, match="wandb_project needs wandb.*pip install wandb"):  # before any model loads
        prepare(config, {"wandb_project"}, selected=([], "no questions"), model_type="qwen2_5_vl")


def offline_wandb(monkeypatch, tmp_path):
    """wandb in offline mode, every file it writes under tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


def logged_run_files(directory):
    (run_folder,) = directory.glob("wandb/offline-run-*")
    tables = {path.name.split("_")[0]: json.loads(path.read_text()) for path in run_folder.glob("files/media/table/*")}
    return tables, next(run_folder.glob("run-*.wandb")).read_bytes()


def test_wandb_offline_logs_config_scores_and_results(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is optional; this test checks what it writes when installed")
    offline_wandb(monkeypatch, tmp_path)
    records = [rec(i, "route_planning", "A" if i < 3 else "B", "A") for i in range(4)]  # 75
    records.append(rec(9, "object_counting", "", "3", options=None, error="video failed"))  # 0
    path = write_run(tmp_path / "run", records, "/ckpt/Spatial-R1", prompt_type="thinking")
    assert report.main([path, "--wandb_project", "vsi", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["overall"] == 37.5 and "wandb: Spatial-R1 logged to project vsi" in captured.err
    tables, run_file = logged_run_files(tmp_path / "run")
    assert tables["scores"]["columns"] == ["task", "score", "ci_low", "ci_high", "questions"]
    assert [row[0:2] + row[4:] for row in tables["scores"]["data"]] == [
        ["object_counting", 0.0, 1],
        ["route_planning", 75.0, 4],
        ["overall (macro)", 37.5, 5],
    ]
    assert len(tables["results"]["data"]) == 5 and tables["results"]["data"][4][-1] == "video failed"
    for logged in (b"vsibench/overall", b"vsibench/route_planning", b"prompt_type", b"thinking", b"/ckpt/Spatial-R1"):
        assert logged in run_file


@pytest.mark.e2e
def test_evaluator_logs_a_finished_run_to_wandb(demo_run, monkeypatch, tmp_path):
    pytest.importorskip("wandb", reason="wandb is optional; this test checks what it writes when installed")
    offline_wandb(monkeypatch, tmp_path)
    run_dir = demo_run("qwen2_5_vl", "--wandb_project", "vsi-demo")
    summary = json.loads((run_dir / "summary.json").read_text())
    tables, run_file = logged_run_files(run_dir)
    assert tables["scores"]["data"][-1][:2] == ["overall (macro)", pytest.approx(summary["overall"])]
    assert len(tables["results"]["data"]) == summary["n"]
    assert b"vsi-demo" in run_file and b"vsibench/overall" in run_file and b"num_frames" in run_file
    assert "wandb: logged to project vsi-demo" in (run_dir / "vsibench_eval_default.log").read_text()
