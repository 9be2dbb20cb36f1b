"""The Python API: eval_qwen.evaluate() on the demo model, by name (worker processes, as the command line) and with
a model held in memory (this process, no reload), giving the same predictions; bad settings raise DataError."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import read_results
from transformers import AutoModelForImageTextToText, AutoProcessor

import eval_qwen
from vsibench_eval.errors import DataError
from vsibench_eval.model import generation
from vsibench_eval.running import launch

SETTINGS = {"batch_size": 4, "max_new_tokens": 8, "num_processes": 1}


def demo_paths(demo_dirs) -> dict:
    demo = demo_dirs("qwen2_5_vl")
    return {"parquet_file": str(demo / "vsibench" / "test.parquet"), "video_dir": str(demo / "vsibench")}


@pytest.mark.e2e
def test_evaluate_by_name_and_in_memory_give_the_same_predictions(demo_dirs, tmp_path, monkeypatch):
    model_dir = demo_dirs("qwen2_5_vl") / "model"
    data = demo_paths(demo_dirs)
    by_name = eval_qwen.evaluate(model_name=str(model_dir), output_dir_base=str(tmp_path / "a"), **data, **SETTINGS)
    run_dir = Path(by_name["run_dir"])
    assert run_dir.parent == tmp_path / "a" / "model"  # as the command line names it
    assert {"config.json", "summary.json", "vsibench_results_default.jsonl", "vsibench_eval_default.log"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert by_name == json.loads((run_dir / "summary.json").read_text())
    assert by_name["n"] == 40 and by_name["complete"] and len(by_name["tasks"]) == 8
    assert by_name["settings"]["max_new_tokens"] == 8 and by_name["model_name"] == str(model_dir)

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(model_dir))
    model.train()  # as a training loop holds it
    padding_side = processor.tokenizer.padding_side

    def refused(*args, **kwargs):
        raise AssertionError("the in-memory model must be used as it is: no worker process, no reload")

    monkeypatch.setattr(launch, "run_workers", refused)
    monkeypatch.setattr(generation.AutoModelForImageTextToText, "from_pretrained", refused)
    in_memory = eval_qwen.evaluate(model, processor, output_dir_base=str(tmp_path / "b"), **data, **SETTINGS)

    assert [r["prediction"] for r in read_results(Path(in_memory["run_dir"]))] == [
        r["prediction"] for r in read_results(run_dir)
    ]
    assert in_memory["tasks"] == by_name["tasks"] and in_memory["overall"] == by_name["overall"]
    assert in_memory["settings"]["devices"] == by_name["settings"]["devices"]
    config = json.loads((Path(in_memory["run_dir"]) / "config.json").read_text())
    assert config["model_name"] == str(model_dir)  # named after the checkpoint the model came from
    # The model is left as it was found: training mode, its own positions, no hooks, no gradients kept.
    assert model.training and torch.is_grad_enabled()
    assert "get_rope_index" not in vars(model.model) and model.model.rope_deltas is None
    assert processor.tokenizer.padding_side == padding_side
    assert not model.model.visual._forward_hooks and not model.model.language_model._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.e2e
def test_evaluate_in_memory_keeps_eval_mode_and_names_the_run(demo_dirs, tmp_path):
    model_dir = demo_dirs("qwen2_5_vl") / "model"
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(model_dir))
    summary = eval_qwen.evaluate(
        model,
        processor,
        model_name="step-200",
        output_dir_base=str(tmp_path),
        question_types=["object_counting"],
        **demo_paths(demo_dirs),
        **SETTINGS,
    )
    assert not model.training
    assert Path(summary["run_dir"]).parent == tmp_path / "step-200" and summary["model_name"] == "step-200"
    assert list(summary["tasks"]) == ["object_counting"] and summary["n"] == 4


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"batch_sise": 4}, "batch_sise: not a config field; did you mean batch_size or"),
        ({"batch_size": "4"}, "batch_size: '4' is not of type <class 'int'>"),
        ({"batch_size": 0}, "batch_size: must be at least 1, got 0"),
        ({"protocol": "lmms"}, "protocol"),
        ({"model_name": "/no/such/checkpoint"}, "model_name: /no/such/checkpoint: no such directory"),
        ({"model_name": ["a", "b"]}, "model_name: evaluate() runs one model"),
    ],
)
def test_bad_settings_raise_data_error_naming_the_field(demo_dirs, tmp_path, settings, needle):
    settings = {"model_name": str(demo_dirs("qwen2_5_vl") / "model"), **settings}
    with pytest.raises(DataError) as raised:
        eval_qwen.evaluate(output_dir_base=str(tmp_path), **demo_paths(demo_dirs), **settings)
    assert needle in str(raised.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # refused before a run directory was made


@pytest.mark.e2e
def test_a_processor_without_a_model_and_a_model_of_another_kind_are_refused(demo_dirs):
    with pytest.raises(DataError, match="processor: given without a model"):
        eval_qwen.evaluate(processor=object())
    llama = SimpleNamespace(config=SimpleNamespace(model_type="llama"))
    with pytest.raises(DataError, match="model: model_type 'llama' is not a Qwen-VL model"):
        eval_qwen.evaluate(llama, object())
    model = AutoModelForImageTextToText.from_pretrained(str(demo_dirs("qwen2_5_vl") / "model"))
    with pytest.raises(DataError, match="processor: needed with a model"):
        eval_qwen.evaluate(model)
