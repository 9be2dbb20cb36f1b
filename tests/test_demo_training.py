"""The trained demo checkpoint: what its training sees, a deterministic build, and a demo table that shows scores
(tests/test_demo_assets.py covers the untrained checkpoints the other tests use)."""

import json
import re
import shutil

import numpy as np
import pytest
from helpers import read_results, run_eval

from vsibench_eval.demo import assets as demo_assets
from vsibench_eval.demo import training as demo_training
from vsibench_eval.demo.tiny_models import build_tiny_checkpoint
from vsibench_eval.metric import MCA_QUESTION_TYPES
from vsibench_eval.model.generation import load_model


@pytest.mark.slow
def test_training_rows_are_the_evaluators_prompts_with_only_the_answer_labelled(demo_dirs):
    model, processor, _ = load_model(str(demo_dirs("qwen3_vl") / "model"), "cpu", mrope_positions="transformers")
    tokenizer = processor.tokenizer
    rng = np.random.default_rng(0)
    styles = []
    for step in range(3):
        inputs, labels = demo_training.training_batch(processor, rng, factor=32, step=step)
        texts = tokenizer.batch_decode(inputs["input_ids"])
        assert len(texts) == labels.shape[0] == 10
        for text, row_labels in zip(texts, labels, strict=True):
            answer = tokenizer.decode(row_labels[row_labels != demo_training.IGNORE])
            # The labelled tokens are the row's last ones, right after the assistant turn opens, and hold exactly
            # an option letter (for a question with options) or a number, then the end of the turn.
            assert text.endswith("<|im_start|>assistant\n" + answer)
            expected = r"[A-D]" if "\nOptions:\n" in text else r"\d+(\.\d+)?"
            assert re.fullmatch(expected + re.escape("<|im_end|>"), answer), (answer, text[-300:])
            assert text.count("<|video_pad|>") > 0 and "<|vision_start|>" in text
        styles.append(
            (
                "Question:\n" in texts[0],  # Spatial-R1's layout, else the official task's
                "<|im_start|>system\nYou are a helpful assistant." in texts[0],
            )
        )
    # Both prompt layouts, and (for this family, whose template adds none) a system message in one style.
    assert styles == [(False, False), (True, False), (False, True)]


@pytest.mark.slow
def test_training_is_deterministic_and_changes_the_weights(tmp_path):
    weights = []
    for name in ("a", "b"):
        path = build_tiny_checkpoint(tmp_path / name, init_std=demo_training.RECIPE["init_std"])
        untrained = (path / "model.safetensors").read_bytes()
        log = demo_training.train_checkpoint(path, steps=4)
        assert len(log["losses"]) == 4
        weights.append((path / "model.safetensors").read_bytes())
        assert weights[-1] != untrained
    assert weights[0] == weights[1]


@pytest.mark.e2e
def test_the_trained_demo_scores_above_zero_and_its_tasks_differ(demo_dirs, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(demo_dirs("qwen2_5_vl") / "vsibench", demo / "vsibench")
    paths = demo_assets.ensure_demo(demo)  # as --demo builds it: trained
    marker = json.loads((paths["model"] / demo_assets.MARKER).read_text())
    assert marker["trained"] == demo_training.RECIPE
    losses = json.loads((paths["model"] / demo_assets.TRAINING_LOG).read_text())["losses"]
    assert len(losses) == demo_training.RECIPE["steps"]
    assert np.mean(losses[-10:]) < losses[0] / 2

    # The demo as `python eval_qwen.py --demo` runs it: protocol lmms_eval, the __main__ block's.
    argv = ["--demo", "--demo_dir", str(demo), "--protocol", "lmms_eval", "--output_dir_base", str(tmp_path / "runs")]
    status, run_dir = run_eval(argv)
    assert status == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["overall"] > 0
    assert len(set(summary["tasks"].values())) >= 2, summary["tasks"]
    # It answers multiple-choice questions with one of their letters (the untrained model never does).
    choices = [r for r in read_results(run_dir) if r["question_type"] in MCA_QUESTION_TYPES]
    letters = [r for r in choices if r["prediction"] in [option[0] for option in r["options"]]]
    assert len(letters) >= 0.8 * len(choices), [r["prediction"] for r in choices]

    # --demo keeps this build; asking for an untrained one replaces it.
    demo_assets.ensure_demo(demo)
    assert json.loads((paths["model"] / demo_assets.MARKER).read_text())["trained"] == demo_training.RECIPE
    demo_assets.ensure_demo(demo, trained=False)
    assert json.loads((paths["model"] / demo_assets.MARKER).read_text())["trained"] is None
    assert not (paths["model"] / demo_assets.TRAINING_LOG).exists()
