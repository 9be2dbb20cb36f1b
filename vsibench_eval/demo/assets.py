"""The demo folder: a tiny checkpoint (tiny_models.py), trained for a few seconds (training.py), and the
synthetic set (data.py), built on first use.

A checkpoint saved by one transformers major may not load in another, so `ensure_demo` rebuilds it when the
installed major, the family or the training recipe changes. Tests use untrained checkpoints (random weights,
whose answers depend on every input).
"""

import json
import os
import pathlib
import shutil
import sys
import tempfile

import transformers

from vsibench_eval.demo.data import build_demo_dataset
from vsibench_eval.demo.tiny_models import INIT_STD, build_tiny_checkpoint
from vsibench_eval.demo.training import RECIPE, train_checkpoint

MARKER = "demo_build.json"
TRAINING_LOG = "demo_training.json"  # each training step's loss and the seconds the training took


def _build_marker(family, trained: bool):
    """What a demo checkpoint records about its build: another family, transformers major or training recipe
    means rebuild."""
    major = int(transformers.__version__.split(".")[0])
    return {"family": family, "transformers_major": major, "trained": RECIPE if trained else None}


def _checkpoint_is_current(model_dir, family, trained: bool | None):
    """Whether model_dir holds a finished build of `family` for this transformers major, trained as asked
    (trained None: trained by the current recipe or not trained)."""
    marker = model_dir / MARKER
    if not marker.is_file():
        return False
    built = json.loads(marker.read_text())
    choices = (True, False) if trained is None else (trained,)
    return any(built == _build_marker(family, choice) for choice in choices)


def _build_marked_checkpoint(out_dir, family, trained: bool):
    build_tiny_checkpoint(out_dir, family, init_std=RECIPE["init_std"] if trained else INIT_STD)
    if trained:
        print(f"demo: training the tiny {family} checkpoint on synthetic questions (seconds, once)", file=sys.stderr)
        (out_dir / TRAINING_LOG).write_text(json.dumps(train_checkpoint(out_dir)))
    (out_dir / MARKER).write_text(json.dumps(_build_marker(family, trained)))  # last: it says the build finished


def _build_in_place(target, build):
    """Run `build(tmp_dir)` in a sibling temporary folder and rename it to `target` once complete.

    A killed build leaves at most a hidden `.NAME-*` folder beside it, never a half-built `target`.
    """
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)  # a stale build: other family or transformers major
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_demo(demo_dir, family="qwen2_5_vl", trained: bool | None = None) -> dict:
    """Build what is missing under `demo_dir` and reuse what is there.

    Layout: model/ (checkpoint), vsibench/test.parquet, vsibench/{dataset}/{scene_name}.mp4. `trained`: True,
    the checkpoint is trained (demo_training); False, it keeps its random weights; None (what --demo asks for),
    a current checkpoint is reused either way and a new one is trained.
    """
    demo_dir = pathlib.Path(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    model_dir, video_dir = demo_dir / "model", demo_dir / "vsibench"

    if not _checkpoint_is_current(model_dir, family, trained):
        _build_in_place(model_dir, lambda tmp: _build_marked_checkpoint(tmp, family, trained is not False))
    if not (video_dir / "test.parquet").is_file():
        _build_in_place(video_dir, build_demo_dataset)

    return {"model": model_dir, "parquet": video_dir / "test.parquet", "video_dir": video_dir}
