"""Demo assets: tiny checkpoints that load and generate like the real families; a VSI-Bench-shaped set."""

import json

import decord
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from transformers.cache_utils import LinearAttentionLayer

from vsibench_eval.demo import assets as demo_assets
from vsibench_eval.demo import data as demo_data
from vsibench_eval.demo import tiny_models
from vsibench_eval.model.families import QWEN_VL_MODEL_TYPES

PATCH_SIZE = {"qwen2_vl": 14, "qwen2_5_vl": 14} | dict.fromkeys(
    ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "qwen4_exp"), 16
)
DEFAULT_SYSTEM = {"qwen2_vl", "qwen2_5_vl"}  # the families whose template adds "You are a helpful assistant."
TIMESTAMPED = {"qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "qwen4_exp"}  # "<t seconds>" before each grid
LINEAR_ATTENTION = {"qwen3_5", "qwen3_5_moe", "qwen4_exp"}  # gated delta-net layers beside (indexed) attention

NUMERICAL_TYPES = {"object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation"}
CHOICE_TYPES = {
    "object_rel_distance",
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "route_planning",
    "obj_appearance_order",
}


@pytest.fixture(scope="module", params=tiny_models.FAMILIES)
def checkpoint(request, demo_dirs):
    family = request.param
    path = demo_dirs(family) / "model"
    processor = transformers.AutoProcessor.from_pretrained(path)
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    )
    return family, processor, model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return demo_data.build_demo_dataset(tmp_path_factory.mktemp("vsibench"))


def video_inputs(processor, question, frames):
    """Processor inputs for a chat-templated question about `frames`, sampled at 1 fps from a 10 fps video."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    metadata = {
        "fps": 10.0,
        "frames_indices": list(range(0, 10 * len(frames), 10)),
        "total_num_frames": 10 * len(frames),
    }
    return processor(
        text=[prompt], videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt"
    )


def random_frames(seed, num_frames, height, width):
    return np.random.default_rng(seed).integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def test_every_accepted_family_has_a_tiny_checkpoint():
    assert set(tiny_models.FAMILIES) == set(PATCH_SIZE) == set(QWEN_VL_MODEL_TYPES)


@pytest.mark.slow
def test_checkpoint_is_the_family_with_real_patch_geometry(checkpoint):
    family, processor, model = checkpoint
    assert model.config.model_type == family
    geometry = (PATCH_SIZE[family], 2, 2)
    vision = model.config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == geometry
    for part in (processor.image_processor, processor.video_processor):
        assert (part.patch_size, part.merge_size, part.temporal_patch_size) == geometry
    tokenizer = processor.tokenizer
    assert model.config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert 300 <= len(tokenizer) <= 1100
    # The prompts tokenize into words, not single bytes.
    assert len(tokenizer.tokenize("Answer with the option's letter from the given choices directly.")) <= 15


@pytest.mark.slow
def test_chat_template_matches_the_family(checkpoint):
    family, processor, _ = checkpoint
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "How many?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    user_turn = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>How many?<|im_end|>\n"
    system_turn = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    expected = (system_turn if family in DEFAULT_SYSTEM else "") + user_turn + "<|im_start|>assistant\n"
    assert prompt == expected


@pytest.mark.slow
def test_video_tokens_match_the_grid_and_generation_runs(checkpoint):
    family, processor, model = checkpoint
    patch = PATCH_SIZE[family]
    num_frames, height, width = 4, 4 * patch, 6 * patch
    frames = random_frames(0, num_frames, height, width)
    inputs = video_inputs(processor, "How many chair(s) are in this room?", frames)

    grid = inputs["video_grid_thw"][0].tolist()
    assert grid == [num_frames // 2, height // patch, width // patch]
    num_video_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert num_video_tokens == np.prod(grid) // 4
    if family == "qwen2_5_vl":  # two frames per temporal grid at 1 fps
        assert inputs["second_per_grid_ts"].tolist() == [2.0]
    if family in TIMESTAMPED:  # a timestamp before each temporal grid: the mean time of its two frames
        prompt = processor.decode(inputs["input_ids"][0])
        assert "<0.5 seconds>" in prompt and "<2.5 seconds>" in prompt

    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] - inputs["input_ids"].shape[1] == 4


@pytest.mark.slow
def test_hybrid_families_keep_recurrent_states_in_their_cache(checkpoint):
    family, processor, model = checkpoint
    layer_types = getattr(model.config.text_config, "layer_types", None) or []
    assert ("linear_attention" in layer_types) == (family in LINEAR_ATTENTION)
    if family not in LINEAR_ATTENTION:
        return
    assert layer_types[-1] in ("full_attention", "indexed_attention")
    assert type(processor.tokenizer).__name__ == "Qwen3_5Tokenizer"
    patch = PATCH_SIZE[family]
    inputs = video_inputs(processor, "How many chair(s) are in this room?", random_frames(0, 4, 2 * patch, 2 * patch))
    cache = transformers.DynamicCache(config=model.config)
    model(**inputs, cache=cache, use_cache=True)
    linear = [layer for layer in cache.layers if isinstance(layer, LinearAttentionLayer)]
    assert len(linear) == layer_types.count("linear_attention")
    assert all(layer.recurrent_states[0].abs().sum() > 0 for layer in linear)
    assert cache.get_seq_length() == inputs["input_ids"].shape[1]  # the attention layers hold every token


@pytest.mark.slow
def test_greedy_output_depends_on_the_prompt_and_the_video(checkpoint):
    family, processor, model = checkpoint
    patch = PATCH_SIZE[family]

    def generate(question, seed):
        inputs = video_inputs(processor, question, random_frames(seed, 4, 4 * patch, 4 * patch))
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return output[0, inputs["input_ids"].shape[1] :].tolist()

    first = generate("How many chair(s) are in this room?", seed=0)
    assert len(set(first)) > 1, "one token repeated"
    assert generate("What is the size of this room (in square meters)?", seed=0) != first
    assert generate("How many chair(s) are in this room?", seed=1) != first


@pytest.mark.slow
def test_same_seed_gives_the_same_weights(tmp_path):
    weights = [
        (tiny_models.build_tiny_checkpoint(tmp_path / name, seed=seed) / "model.safetensors").read_bytes()
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]


# ---------------------------------------------------------------------------------------------------------
# The demo set


def test_dataset_has_the_vsibench_columns_and_types(dataset):
    schema = pq.read_schema(dataset)
    columns = ["id", "dataset", "scene_name", "question_type", "question", "ground_truth", "options"]
    assert schema.names == columns
    assert schema.field("id").type == pa.int64()
    assert schema.field("options").type == pa.list_(pa.string())
    for name in ("dataset", "scene_name", "question_type", "question", "ground_truth"):
        assert schema.field(name).type == pa.string()


def test_dataset_rows(dataset):
    table = pq.read_table(dataset).to_pandas()
    assert len(table) == 40
    ids = table["id"].tolist()
    assert len(set(ids)) == 40
    assert max(ids) - min(ids) + 1 > 40, "ids should have gaps, as upstream's do"
    assert set(table["question_type"]) == NUMERICAL_TYPES | CHOICE_TYPES
    assert set(table["dataset"]) == {"arkitscenes", "scannet", "scannetpp"}
    per_video = table.groupby(["dataset", "scene_name"])["question_type"]
    assert per_video.nunique().eq(10).all() and per_video.size().eq(10).all()

    for row in table.itertuples():
        assert row.question.strip()
        if row.question_type in NUMERICAL_TYPES:
            assert row.options is None
            float(row.ground_truth)
        else:
            options = list(row.options)
            letters = "ABCD"[: len(options)]
            assert 2 <= len(options) <= 4
            assert [option[:3] for option in options] == [f"{letter}. " for letter in letters]
            assert row.ground_truth in letters
    assert (table["question_type"] == "object_rel_direction_medium").sum() == 4
    medium = table[table["question_type"] == "object_rel_direction_medium"]
    assert all(sorted(o[3:] for o in options) == ["Back", "Left", "Right"] for options in medium["options"])


def test_videos_decode_with_the_expected_frames(dataset):
    video_dir = dataset.parent
    durations = []
    for name, scene, width, height, seconds in demo_data.DEMO_SCENES:
        reader = decord.VideoReader(str(video_dir / name / f"{scene}.mp4"))
        assert len(reader) == seconds * demo_data.DEMO_FPS
        assert reader.get_avg_fps() == pytest.approx(demo_data.DEMO_FPS)
        first, middle = reader.get_batch([0, len(reader) // 2]).asnumpy()
        assert first.shape == (height, width, 3)
        assert first.std() > 10, "blank frame"
        assert np.abs(first.astype(int) - middle).mean() > 1, "frames should differ"
        durations.append(seconds)
    assert max(durations) > 32 and min(durations) < 10
    assert sum(path.stat().st_size for path in video_dir.rglob("*.mp4")) < 1_000_000


def decoded(path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_dataset_is_deterministic_in_what_the_evaluator_reads(dataset, tmp_path):
    """Two builds give the same parquet and videos that decode to the same frames (encoded bytes may differ
    between library versions, and are not what the evaluator sees)."""
    again = demo_data.build_demo_dataset(tmp_path)
    assert pq.read_table(again).equals(pq.read_table(dataset))
    videos = sorted(dataset.parent.rglob("*.mp4"))
    assert len(videos) == len(demo_data.DEMO_SCENES)
    for path in videos:
        assert np.array_equal(decoded(again.parent / path.relative_to(dataset.parent)), decoded(path)), path


def test_videos_decode_close_to_the_rendered_frames(tmp_path):
    frames = demo_data.render_frames(160, 120, 20, np.random.default_rng(3))
    demo_data.write_video(tmp_path / "v.mp4", frames, demo_data.DEMO_FPS)
    error = np.abs(decoded(tmp_path / "v.mp4").astype(int) - frames.astype(int)).mean()
    assert error < 8, f"mean absolute error {error:.1f} of 255"


# ---------------------------------------------------------------------------------------------------------
# ensure_demo


def file_mtimes(folder):
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_ensure_demo_builds_once_and_reuses(tmp_path):
    paths = demo_assets.ensure_demo(tmp_path / "demo", trained=False)
    assert paths == {
        "model": tmp_path / "demo" / "model",
        "parquet": tmp_path / "demo" / "vsibench" / "test.parquet",
        "video_dir": tmp_path / "demo" / "vsibench",
    }
    assert (paths["model"] / "model.safetensors").is_file() and paths["parquet"].is_file()
    assert (paths["video_dir"] / "scannet" / "scene0011_00.mp4").is_file()
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["model", "vsibench"], "leftover folders"

    before = file_mtimes(tmp_path / "demo")
    assert demo_assets.ensure_demo(tmp_path / "demo", trained=False) == paths
    assert demo_assets.ensure_demo(tmp_path / "demo") == paths  # --demo reuses an untrained build too
    assert file_mtimes(tmp_path / "demo") == before


@pytest.mark.slow
def test_ensure_demo_rebuilds_a_stale_or_other_family_checkpoint(tmp_path):
    paths = demo_assets.ensure_demo(tmp_path, family="qwen2_vl", trained=False)
    marker = paths["model"] / demo_assets.MARKER
    parquet_mtime = paths["parquet"].stat().st_mtime_ns

    demo_assets.ensure_demo(tmp_path, family="qwen3_vl", trained=False)
    assert json.loads((paths["model"] / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert json.loads(marker.read_text())["family"] == "qwen3_vl"
    assert paths["parquet"].stat().st_mtime_ns == parquet_mtime, "the data set should be reused"

    # A checkpoint saved by another transformers major is rebuilt.
    marker.write_text(json.dumps({"family": "qwen3_vl", "transformers_major": 4, "trained": None}))
    demo_assets.ensure_demo(tmp_path, family="qwen3_vl", trained=False)
    assert json.loads(marker.read_text())["transformers_major"] == int(transformers.__version__.split(".")[0])

    # A model folder without its marker (an old or foreign build) is rebuilt too.
    marker.unlink()
    demo_assets.ensure_demo(tmp_path, family="qwen3_vl", trained=False)
    assert marker.is_file()
