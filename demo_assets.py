"""The demo folder: a tiny checkpoint (tiny_models) and the synthetic set (demo_data), built on first use.

A checkpoint saved by one transformers major may not load in another, so `ensure_demo` rebuilds it when the
installed major or the family changes. Imports tiny_models and demo_data.
"""

import json
import os
import pathlib
import shutil
import tempfile

import transformers

from demo_data import build_demo_dataset
from tiny_models import build_tiny_checkpoint

MARKER = "demo_build.json"


def _build_marker(family):
    """What a demo checkpoint records about its build: another family or transformers major means rebuild."""
    return {"family": family, "transformers_major": int(transformers.__version__.split(".")[0])}


def _checkpoint_is_current(model_dir, family):
    marker = model_dir / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == _build_marker(family)


def _build_marked_checkpoint(out_dir, family):
    build_tiny_checkpoint(out_dir, family)
    (out_dir / MARKER).write_text(json.dumps(_build_marker(family)))  # last: it says the build finished


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


def ensure_demo(demo_dir, family="qwen2_5_vl") -> dict:
    """Build what is missing under `demo_dir` and reuse what is there.

    Layout: model/ (checkpoint), vsibench/test.parquet, vsibench/{dataset}/{scene_name}.mp4.
    """
    demo_dir = pathlib.Path(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    model_dir, video_dir = demo_dir / "model", demo_dir / "vsibench"

    if not _checkpoint_is_current(model_dir, family):
        _build_in_place(model_dir, lambda tmp: _build_marked_checkpoint(tmp, family))
    if not (video_dir / "test.parquet").is_file():
        _build_in_place(video_dir, build_demo_dataset)

    return {"model": model_dir, "parquet": video_dir / "test.parquet", "video_dir": video_dir}
