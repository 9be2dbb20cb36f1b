"""A run in lmms-eval's file format, so lmms-eval's tooling reads our runs: the results JSON and the per-sample
JSONL its evaluator writes for the `vsibench` task (as lmms-eval 0.7.3 lays them out).

The scores are given: report.py computes them with the chosen parser.

What maps to what:
- files: {DIR}/{model}/{date}_results.json and {DIR}/{model}/{date}_samples_{task}.jsonl; {model} is the
  checkpoint path's last two parts with "/" written "__" (lmms-eval's model_name_sanitized), {date} the run
  folder's YYYYmmdd_HHMMSS (else the results file's time), {task} vsibench, vsibench_debiased or
  vsibench_pruned after the run's subset.
- results[task]: "{metric},none" per metric of vsibench.yaml: vsibench_overall (our macro overall) and
  {task}_accuracy / {task}_mra (our task scores), as fractions in [0, 1] rounded to 6 places like lmms-eval's
  aggregation; "N/A" for a task without questions and for the standard errors (lmms-eval computes none for
  vsibench). n-samples: our question count.
- each sample line: doc_id (the question id), target (ground truth), resps (the raw prediction, only when it
  differs from filtered_resps), filtered_resps (the text the official rules read: the <answer> span, else the
  prediction), token_counts, doc_hash (sha256 of the question's fields), one entry per metric holding the
  question's fields plus `prediction` (= filtered_resps) and its score under `accuracy` (multiple choice) or
  `MRA:.5:.95:.05` (numerical), and input (the prompt sent). A failed question keeps its `error` and scores 0.
- config: model, model_args ("pretrained=..."), batch_size; model_name, model_name_sanitized, date; our own run
  config, results file and parser under "eval_qwen".
The scores are ours: the official VSI-Bench metric (or the lenient parser when chosen), not lmms-eval 0.7.3's
numerical parser, which reads the first number or number word anywhere in the answer.
"""

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

from vsibench_eval.errors import DataError
from vsibench_eval.metric import MCA_QUESTION_TYPES, NA_QUESTION_TYPES, TASKS, extract_answer, task_of

EXPORT_FORMATS = ("lmms_eval",)
TASK_BY_SUBSET = {"full": "vsibench", "debiased": "vsibench_debiased", "pruned": "vsibench_pruned"}
MULTIPLE_CHOICE_TASKS = {task_of(qtype) for qtype in MCA_QUESTION_TYPES}
# lmms-eval's metric names in vsibench.yaml's order, with the task each one reports (None: the overall).
METRICS = (("vsibench_overall", None),) + tuple(
    (f"{task}_{'accuracy' if task in MULTIPLE_CHOICE_TASKS else 'mra'}", task) for task in TASKS
)
VSIBENCH_TYPES = [qtype for qtype in MCA_QUESTION_TYPES + NA_QUESTION_TYPES if task_of(qtype) in TASKS]
DOC_FIELDS = ("id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth")
RUN_FOLDER = re.compile(r"\d{8}_\d{6}")


def sanitized_model_name(model: str) -> str:
    """The model's last two path parts, with the characters lmms-eval keeps out of folder names written "__"."""
    last_two = "/".join(model.rstrip("/").split("/")[-2:])
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", last_two)


def run_date(results_path: str) -> str:
    """The run's date as lmms-eval writes it (YYYYmmdd_HHMMSS): the run folder's name, else the file's time."""
    path = Path(results_path).resolve()
    if RUN_FOLDER.fullmatch(path.parent.name):
        return path.parent.name
    return datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d_%H%M%S")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_line(position: int, record: dict, score: float) -> dict:
    """One line of the samples JSONL for one result record and its score."""
    doc = {field: record[field] for field in DOC_FIELDS if field in record}
    filtered = extract_answer(record["prediction"] or "")
    metric_key = "accuracy" if record["question_type"] in MCA_QUESTION_TYPES else "MRA:.5:.95:.05"
    scored = (
        doc | {"prediction": filtered, metric_key: score} | ({"error": record["error"]} if record.get("error") else {})
    )
    line = {
        "doc_id": record["id"] if isinstance(record.get("id"), int) else position,
        "target": str(doc["ground_truth"]),
    }
    if (record["prediction"] or "") != filtered:
        line["resps"] = record["prediction"]
    line |= {
        "filtered_resps": filtered,
        "token_counts": [None],
        "doc_hash": sha256(json.dumps(doc, indent=2, ensure_ascii=False)),
    }
    return line | {metric: scored for metric, _ in METRICS} | {"input": record.get("prompt", "")}


def task_config(task: str, config: dict) -> dict:
    """The task's entry under "configs": vsibench.yaml's settings, with this run's generation length."""
    return {
        "task": task,
        "dataset_path": "nyu-visionx/VSI-Bench",
        "dataset_name": "debiased" if task == "vsibench_debiased" else "full",
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_target": "ground_truth",
        "generation_kwargs": {"max_new_tokens": config.get("max_new_tokens"), "do_sample": False},
        "metric_list": [{"metric": metric, "higher_is_better": True} for metric, _ in METRICS],
        "metadata": [{"version": 0.0}],
    }


def results_json(task: str, result: dict, samples: list[dict], model: str, date: str, extra: dict) -> dict:
    """The results JSON of one run: lmms-eval's keys, our aggregate() (percent) written as fractions."""
    scores = {}
    for metric, key in METRICS:
        value = result["overall"] if key is None else result["tasks"].get(key)
        scores[f"{metric},none"] = "N/A" if value is None else round(value / 100.0, 6)
        scores[f"{metric}_stderr,none"] = "N/A"
        scores[f"{metric}_stderr_clt,none"] = "N/A"
    config = extra["config"]
    return {
        "results": {task: {"alias": task, **scores}},
        "group_subtasks": {task: []},
        "configs": {task: task_config(task, config)},
        "versions": {task: "Yaml"},
        "n-shot": {task: 0},
        "higher_is_better": {task: {metric: True for metric, _ in METRICS}},
        "n-samples": {task: {"original": len(samples), "effective": len(samples)}},
        "config": {"model": model, "model_args": f"pretrained={model}", "batch_size": config.get("batch_size")},
        "date": date,
        "task_hashes": {task: sha256("".join(f"sample_{i}{s['doc_hash']}" for i, s in enumerate(samples)))},
        "model_source": "eval_qwen",
        "model_name": model,
        "model_name_sanitized": sanitized_model_name(model),
        "eval_qwen": extra,
    }


def write_lmms_eval(
    directory: str, records: list[dict], scores: list[float], result: dict, config: dict, results_path: str
) -> list[str]:
    """Write a run's results JSON and samples JSONL under `directory`; returns the two paths. `scores` are the
    records' scores in [0, 1], `result` their aggregate() (percent), `config` the run's config.json ({} if none)."""
    for number, record in enumerate(records, 1):
        if record["question_type"] not in VSIBENCH_TYPES:
            raise DataError(
                f"{results_path}: record {number}: question_type {record['question_type']!r} is not a VSI-Bench "
                "type; lmms-eval's vsibench task has none, so this run cannot be exported"
            )
    task = TASK_BY_SUBSET.get(config.get("subset"), "vsibench")
    model = str(config.get("model_name") or Path(results_path).resolve().parent.name)
    date = run_date(results_path)
    samples = [sample_line(i, r, s) for i, (r, s) in enumerate(zip(records, scores, strict=True))]
    extra = {"results_file": str(Path(results_path).resolve()), "parser": result["parser"], "config": config}
    folder = Path(directory) / sanitized_model_name(model)
    results_file, samples_file = folder / f"{date}_results.json", folder / f"{date}_samples_{task}.jsonl"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results_json(task, result, samples, model, date, extra), indent=2) + "\n")
        with open(samples_file, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(sample, ensure_ascii=False) + "\n" for sample in samples)
    except OSError as error:
        raise DataError(f"--export: {folder}: cannot write ({error.strerror or error})") from None
    return [str(results_file), str(samples_file)]
