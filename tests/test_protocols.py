"""Evaluation protocols: each reference's frames, sizes, grids, prompts and generation settings, per model family.

Expected values are hand-written from the references' code (cited in docs/protocols.md's table) or computed
with the reference's own rule written out below (qwen-vl-utils' smart_resize and pixel limits, the original
Spatial-R1 script's swapped resize), never with the functions under test.
"""

import json
import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import read_results, run_eval
from PIL import Image

from vsibench_eval.demo import tiny_models
from vsibench_eval.demo.data import DEMO_SCENES, render_frames, write_video
from vsibench_eval.errors import DataError
from vsibench_eval.inputs.cogmap import SPATIAL_R1_COGMAP_PROMPT
from vsibench_eval.inputs.frames import VideoError, load_video, sample_frame_indices
from vsibench_eval.inputs.prompts import build_prompt, cogmap_block
from vsibench_eval.model.generation import chat_text, decoding_config, generation_settings, greedy, processor_inputs
from vsibench_eval.running.video_prep import frame_rules
from vsibench_eval.settings.config import EvalConfig, resume_config
from vsibench_eval.settings.protocols import (
    EVALUATOR_DEFAULTS,
    apply_protocol,
    describe,
    deviations,
    effective_settings,
)

PROTOCOLS = ("none", "spatial_r1", "vsibench_official", "lmms_eval")
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
# Short videos keep the suite fast: 6 frames at 2 fps (3 s), of which the size tests ask for 4 (the 32 the
# protocols ask for are checked on frame indices alone, and in the demo runs at the end).
VIDEO_FRAMES, VIDEO_FPS, ASKED = 6, 2, 4
# The sizes VSI-Bench's videos come in: ScanNet 640x480, ScanNet++ 1920x1440, portrait ARKitScenes 480x640.
SIZES = {"scannet": (640, 480), "scannetpp": (1920, 1440), "portrait": (480, 640)}  # (width, height)


def settings(protocol: str, family: str) -> EvalConfig:
    config = EvalConfig(protocol=protocol)
    apply_protocol(config, family)
    return config


# ---------------------------------------------------------------- the references' rules, written out


def qvu_smart_resize(height, width, factor, min_pixels, max_pixels):
    """qwen-vl-utils' smart_resize (vision_process.py), as published."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qvu_video_size(height, width, factor, nframes, min_pixels, total_pixels, max_pixels=None):
    """fetch_video's frame size: its per-frame cap from 768 tokens and the video's budget, then smart_resize."""
    cap = max(min(768 * factor * factor, total_pixels / nframes * 2), int(min_pixels * 1.05))
    return qvu_smart_resize(height, width, factor, min_pixels, min(max_pixels, cap) if max_pixels else cap)


def original_spatial_r1_size(width, height, max_size=448):
    """The original script's resize_image, on a PIL image of `width` x `height`: PIL's .size is (width, height)
    but the script unpacked it as h, w, and resize() takes (width, height). Returns (height, width) after."""
    h, w = width, height
    if max(h, w) <= max_size:
        return height, width
    if h > w:
        new_h, new_w = max_size, int(w * (max_size / h))
    else:
        new_w, new_h = max_size, int(h * (max_size / w))
    return new_h, new_w


def reference_size(protocol, family, width, height, nframes):
    """The frame size (height, width) a reference gives a frame of width x height."""
    factor = 2 * PATCH[family]
    if protocol == "spatial_r1":  # then qwen-vl-utils 0.0.10's fetch_image with the image limits
        return qvu_smart_resize(*original_spatial_r1_size(width, height), factor, 4 * factor**2, 16384 * factor**2)
    if protocol == "vsibench_official":  # qwen-vl-utils 0.0.8 defaults, nothing passed
        return qvu_video_size(height, width, factor, nframes, 128 * 28 * 28, 24576 * 28 * 28)
    if protocol == "lmms_eval":  # min_pixels and max_pixels passed; qwen-vl-utils 0.0.14's budget
        return qvu_video_size(height, width, factor, nframes, 256 * 28 * 28, 128000 * factor**2 * 0.9, 1605632)
    scale = min(1.0, 448 / height, 448 / width)  # the evaluator's own fit: never upscaled
    return round(height * scale / factor) * factor, round(width * scale / factor) * factor


# Hand-written (height, width) per reference and size; grids follow as (H, W) / patch.
EXPECTED_SIZES = {
    ("spatial_r1", 28): {"scannet": (448, 336), "scannetpp": (448, 336), "portrait": (336, 448)},  # swapped
    ("spatial_r1", 32): {"scannet": (448, 320), "scannetpp": (448, 320), "portrait": (320, 448)},
    ("vsibench_official", 28): {"scannet": (476, 644), "scannetpp": (672, 896), "portrait": (644, 476)},
    ("vsibench_official", 32): {"scannet": (480, 640), "scannetpp": (768, 1024), "portrait": (640, 480)},
    ("lmms_eval", 28): {"scannet": (476, 644), "scannetpp": (672, 896), "portrait": (644, 476)},
    ("lmms_eval", 32): {"scannet": (480, 640), "scannetpp": (768, 1024), "portrait": (640, 480)},
    ("none", 28): {"scannet": (336, 448), "scannetpp": (336, 448), "portrait": (448, 336)},
    ("none", 32): {"scannet": (320, 448), "scannetpp": (320, 448), "portrait": (448, 320)},
}


# ---------------------------------------------------------------- frame indices


def test_frame_indices_of_a_36_second_video():
    """360 frames at 10 fps, as the demo's ARKitScenes video."""
    floor = [(i * 359) // 31 for i in range(32)]  # np.linspace(0, 359, 32, dtype=int): exact floors here
    rounded = [round(Fraction(i * 359, 31)) for i in range(32)]  # torch.linspace(...).round(): no ties here
    assert rounded[:4] == [0, 12, 23, 35] and rounded[-1] == 359  # as lmms-eval logs them
    expected = {"none": floor, "spatial_r1": floor, "vsibench_official": rounded, "lmms_eval": rounded}
    for protocol in PROTOCOLS:
        for family in FAMILIES:
            config = settings(protocol, family)
            indices = sample_frame_indices(
                360, 10.0, config.num_frames, config.fps, config.frame_count, config.frame_index_rounding
            )
            assert indices == expected[protocol], (protocol, family)


@pytest.mark.parametrize(
    "protocol, family, expected",
    [
        ("spatial_r1", "qwen2_5_vl", 2),  # int(2.7 s) x 1 fps
        ("none", "qwen2_5_vl", 2),
        ("lmms_eval", "qwen2_5_vl", 26),  # min(32, 27) floored to even
        ("lmms_eval", "qwen3_vl", None),  # 32 asked, 27 there: qwen-vl-utils refuses
        ("vsibench_official", "qwen2_vl", None),
    ],
)
def test_frame_counts_of_a_short_video(protocol, family, expected):
    config = settings(protocol, family)
    count_args = (27, 10.0, config.num_frames, config.fps, config.frame_count, config.frame_index_rounding)
    if expected is None:
        with pytest.raises(ValueError, match="32 frames asked for .* but the video has 27"):
            sample_frame_indices(*count_args)
    else:
        assert len(sample_frame_indices(*count_args)) == expected


# ---------------------------------------------------------------- frame sizes and grids on real-size videos


@pytest.fixture(scope="module")
def sized_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sized_videos")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (width, height) in SIZES.items():
        paths[name] = folder / f"{name}.mp4"
        write_video(paths[name], render_frames(width, height, VIDEO_FRAMES, rng), VIDEO_FPS)
    return paths


@pytest.fixture(scope="module")
def processors():
    tokenizer = tiny_models.build_tokenizer()
    return {family: tiny_models.build_processor(family, tokenizer) for family in FAMILIES}


LOADED = {}


def load(path, config, factor):
    """load_video under a protocol's settings, once per video, settings and patch factor."""
    key = (str(path), json.dumps(effective_settings(config)), factor)
    if key not in LOADED:
        target = tuple(config.target_resolution)
        LOADED[key] = load_video(str(path), config.num_frames, config.fps, target, factor, frame_rules(config))
    return LOADED[key]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_frame_sizes_and_grids_equal_the_references(protocol, family, sized_videos, processors):
    config = settings(protocol, family)
    config.num_frames = ASKED
    processor = processors[family]
    patch = PATCH[family]
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    assert factor == 2 * patch
    for name, (width, height) in SIZES.items():
        video = load(sized_videos[name], config, factor)
        count = len(video.frame_indices)
        assert count == {"none": 3, "spatial_r1": 3}.get(protocol, ASKED), (protocol, name)  # 3: whole seconds
        rule = np.linspace if config.frame_index_rounding == "floor" else None
        if rule:
            assert video.frame_indices == np.linspace(0, VIDEO_FRAMES - 1, count).astype(int).tolist()
        else:
            assert video.frame_indices == torch.linspace(0, VIDEO_FRAMES - 1, count).round().long().tolist()
        expected = EXPECTED_SIZES[(protocol, factor)][name]
        assert reference_size(protocol, family, width, height, count) == expected, (protocol, name)
        assert video.frame_size() == list(expected), (protocol, family, name)
        processor_inputs(processor, video, [chat_text(processor, "Hi")], config.position_fps)
        assert video.grid_thw == [math.ceil(count / 2), expected[0] // patch, expected[1] // patch]


def test_video_tokens_per_grid_as_the_issue_states(sized_videos, processors):
    """About 391 tokens per temporal grid for ScanNet and 768 for ScanNet++ with Qwen2.5-VL (merge 2 x 2)."""
    config = settings("lmms_eval", "qwen2_5_vl")
    config.num_frames = ASKED
    tokens = {}
    for name in ("scannet", "scannetpp"):
        video = load(sized_videos[name], config, 28)
        processor_inputs(processors["qwen2_5_vl"], video, ["<|vision_start|><|video_pad|><|vision_end|>"], "metadata")
        tokens[name] = video.grid_thw[1] * video.grid_thw[2] // 4
    assert tokens == {"scannet": 391, "scannetpp": 768}


def test_spatial_r1_frames_are_the_originals_swapped_lanczos_resize(sized_videos):
    """The pixels, not only the size: what the original gave PIL, PIL's Lanczos, then factor multiples."""
    from decord import VideoReader

    config = settings("spatial_r1", "qwen2_5_vl")
    config.num_frames = ASKED
    video = load(sized_videos["scannet"], config, 28)
    decoded = VideoReader(str(sized_videos["scannet"])).get_batch(video.frame_indices).asnumpy()
    for frame, ours in zip(decoded, video.frames, strict=True):
        image = Image.fromarray(frame)
        h, w = image.size  # the original's own lines
        new_h, new_w = 448, int(w * (448 / h))
        expected = np.asarray(image.resize((new_w, new_h), Image.Resampling.LANCZOS))
        assert expected.shape == (448, 336, 3)  # a 640 x 480 frame reaches the model 336 wide, 448 tall
        assert np.array_equal(ours, expected)


def test_smart_resize_frames_are_qwen_vl_utils_bicubic(sized_videos):
    from decord import VideoReader
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    config = settings("lmms_eval", "qwen2_5_vl")
    config.num_frames = ASKED
    video = load(sized_videos["portrait"], config, 28)
    decoded = VideoReader(str(sized_videos["portrait"])).get_batch(video.frame_indices[:4]).asnumpy()
    tensor = torch.tensor(decoded).permute(0, 3, 1, 2)  # qwen-vl-utils' own steps
    expected = resize(tensor, [644, 476], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    assert torch.equal(torch.from_numpy(video.frames[:4]).permute(0, 3, 1, 2).float(), expected)


def test_a_frame_rule_the_video_cannot_meet_is_a_video_error(sized_videos):
    config = settings("vsibench_official", "qwen2_vl")  # 32 frames asked for, the video has 6
    with pytest.raises(VideoError, match=r"scannet\.mp4: 32 frames asked for .* the video has 6"):
        load_video(str(sized_videos["scannet"]), 32, 0.0, (448, 448), 28, frame_rules(config))


# ---------------------------------------------------------------- prompts, character for character

NA = {"question_type": "object_counting", "question": "How many chair(s) are in this room?", "options": None}
MC = {
    "question_type": "object_rel_distance",
    "question": "Which object is closest to the bed?",
    "options": ["A. lamp", "B. sofa"],
}


def prompt(protocol, question, prompt_type=None, block=""):
    config = settings(protocol, "qwen2_5_vl")
    return build_prompt(question, prompt_type or config.prompt_type, None, block, config.prompt_format)


def test_prompts_equal_the_references_wording():
    sr1_na = "Question:\nHow many chair(s) are in this room?\nPlease answer the question using a single word or phrase."
    sr1_mc = (
        "Question:\nWhich object is closest to the bed?\nOptions:\nA. lamp\nB. sofa\n"
        "Answer with the option's letter from the given choices directly."
    )
    task_na = (
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase."
    )
    task_mc = (
        "These are frames of a video.\nWhich object is closest to the bed?\nOptions:\nA. lamp\nB. sofa\n"
        "Answer with the option's letter from the given choices directly."
    )
    for protocol, (na, mc) in {
        "none": (sr1_na, sr1_mc),
        "spatial_r1": (sr1_na, sr1_mc),
        "vsibench_official": (task_na, task_mc),
        "lmms_eval": (task_na, task_mc),
    }.items():
        assert prompt(protocol, NA) == na and prompt(protocol, MC) == mc, protocol
    # The official task's gemini_api / gpt4v variants keep its own first line; Spatial-R1's keep "Question:".
    assert prompt("lmms_eval", NA, "gemini_api") == (
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Do not response anything other than a single number!"
    )
    assert prompt("spatial_r1", NA, "gpt4v") == (
        "Question:\nHow many chair(s) are in this room?\nDo not response anything other than a single number!"
    )
    assert prompt("spatial_r1", MC, "thinking").endswith(
        "B. sofa\nFirst output the thinking process in <think> </think> tags and then output an option letter "
        "in <answer> </answer> tags."
    )


def test_spatial_r1_puts_the_cognitive_map_where_the_original_did():
    intro = "Here is a cognitive_map for the video that may help you understand the space in the video:"
    rest = "Question:\nHow many chair(s) are in this room?\nPlease answer the question using a single word or phrase."
    cogmap = "{'chair': [(2, 3)]}"
    generated = cogmap_block(cogmap, "generated", "spatial_r1", offloading=False)
    assert prompt("spatial_r1", NA, block=generated) == f"\n{intro}\n\nCognitive Map:\n {cogmap}\n{rest}"
    offloaded = cogmap_block(cogmap, "offloaded", "spatial_r1", offloading=True)
    assert prompt("spatial_r1", NA, block=offloaded) == f"\n{intro}\n\nCognitive Map:\n{cogmap}\n{rest}"
    missing = cogmap_block(None, "none", "spatial_r1")
    assert prompt("spatial_r1", NA, block=missing) == (
        f"\n{intro}\n\nCognitive Map Unavailable (Generation/Offloading Failed).\n{rest}"
    )


def test_spatial_r1_cognitive_map_prompt_character_for_character():
    lines = [
        "[Task]",
        "These frames represent an indoor scene from a video. Your objective",
        "is to identify specific objects within the **video scene**, un-",
        "derstand the spatial arrangement of the scene, and",
        "estimate the center point of each object, assuming",
        "the entire scene is represented by a 10x10 grid. Base your analysis on the provided frames.",
        "[Rule]",
        "1. We provide the categories to care about in this",
        "scene: {[",
        '    "ceiling light", "trash can", "bed", "heater", "closet", "pillow", "backpack", "chair", "refrigerator",',
        '    "tv", "nightstand", "keyboard", "computer tower", "coat hanger", "table", "trash bin", "whiteboard",',
        '    "monitor", "sofa", "clock", "computer mouse", "radiator", "telephone"',
        "]}. Focus ONLY on",
        "these categories for the entire video scene.",
        "2. Estimate the center location of each instance",
        "within the provided categories, assuming the entire",
        "scene is represented by a 10x10 grid, considering the information from all frames.",
        "3. If a category contains multiple instances across all frames, include",
        "all of them.",
        "4. Each object\u2019s estimated location should ac-",
        "curately reflect its real position in the scene,",
        "preserving the relative spatial relationships among",
        "all objects in the video scene.",
        "[Output]",
        "Present the estimated center locations for each ob-",
        "ject as a list within a dictionary. STRICTLY follow",
        'this JSON format: {"category name": [(x_1, y_1),',
        "...], ...} for the **entire video scene**. Notably, x,y should be in the range of [1, 10].",
        "",
    ]
    assert SPATIAL_R1_COGMAP_PROMPT == "\n".join(lines)


@pytest.mark.parametrize(
    "protocol, family, system",
    [
        ("lmms_eval", "qwen2_5_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"),  # template's
        ("lmms_eval", "qwen3_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"),  # sent
        ("spatial_r1", "qwen3_vl", ""),  # none sent, and Qwen3-VL's template adds none
        ("vsibench_official", "qwen2_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"),
    ],
)
def test_system_prompt_per_family(protocol, family, system, processors):
    config = settings(protocol, family)
    text = chat_text(processors[family], "Hi", config.system_prompt)
    user = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    assert text == system + user


# ---------------------------------------------------------------- generation settings in force


@pytest.fixture(scope="module")
def checkpoints_with_generation_config(demo_dirs, tmp_path_factory):
    """The tiny checkpoints with a generation_config.json shaped like Qwen2.5-VL-7B-Instruct's."""
    folders = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family) / "model"
        shutil.copytree(demo_dirs(family) / "model", folder)
        (folder / "generation_config.json").write_text(
            json.dumps(
                {
                    "bos_token_id": 740,
                    "pad_token_id": 740,
                    "do_sample": True,
                    "eos_token_id": [742, 740],  # <|im_end|>, <|endoftext|>
                    "repetition_penalty": 1.05,
                    "temperature": 0.1,
                    "top_p": 0.001,
                    "top_k": 1,
                }
            )
        )
        folders[family] = folder
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_generation_settings_in_force_are_the_protocols(family, checkpoints_with_generation_config):
    from vsibench_eval.model.generation import load_model

    model, processor, _ = load_model(str(checkpoints_with_generation_config[family]), "cpu")
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == 742
    expected = {  # repetition penalty, stop ids, length: from each reference's code
        "none": (1.05, [742, 740], 512),
        "spatial_r1": (1.05, [742, 740], 512),  # generate(max_new_tokens=512, do_sample=False): inherits 1.05
        "vsibench_official": (1.0, [742, 740], 64),  # vLLM SamplingParams(temperature=0, max_tokens=64)
        "lmms_eval": (1.05, 742, 16),  # eos_token_id=tokenizer.eos_token_id, no penalty passed
    }
    for protocol, (penalty, eos, length) in expected.items():
        config = settings(protocol, family)
        decoding = decoding_config(model, processor, config.repetition_penalty, config.eos_tokens)
        passed = greedy(model, processor, config.max_new_tokens, decoding)
        in_force, _ = model._prepare_generation_config(passed)  # what generate() itself will use
        assert in_force.repetition_penalty == penalty, protocol
        assert in_force.eos_token_id == eos and in_force.max_new_tokens == length, protocol
        assert in_force.do_sample is False and in_force.num_beams == 1
        recorded = generation_settings(passed)
        assert recorded["repetition_penalty"] == penalty and recorded["max_new_tokens"] == length
        assert recorded["temperature"] == 0.1  # the checkpoint's, in force but unused by greedy search
    # An explicit penalty wins over the checkpoint's.
    decoding = decoding_config(model, processor, "1.2", "checkpoint")
    assert model._prepare_generation_config(greedy(model, processor, 8, decoding))[0].repetition_penalty == 1.2


# ---------------------------------------------------------------- protocol, overrides, deviations


def test_explicit_fields_override_the_protocol_and_are_reported():
    config = EvalConfig(protocol="lmms_eval", max_new_tokens=64, prompt_type="thinking")
    apply_protocol(config, "qwen3_vl")
    assert config.max_new_tokens == 64 and config.system_prompt == "You are a helpful assistant."
    assert config.total_pixels == 117964800 and config.frame_count == "even"
    assert deviations(config, "qwen3_vl") == {"max_new_tokens": (64, 16), "prompt_type": ("thinking", "default")}
    lines = describe(config, "qwen3_vl")
    assert "max_new_tokens 64 (protocol: 16)" in lines[1] and "prompt_type 'thinking'" in lines[1]
    assert "reasoning is cut off" in lines[2]  # thinking with 64 new tokens

    config = settings("spatial_r1", "qwen3_vl")
    assert "defines settings for qwen2_5_vl only" in describe(config, "qwen3_vl")[1]
    unchanged = describe(settings("lmms_eval", "qwen2_5_vl"), "qwen2_5_vl")
    assert unchanged[1] == "no setting deviates from protocol lmms_eval"
    config = EvalConfig(num_frames=8)
    apply_protocol(config, "qwen2_5_vl")
    assert deviations(config, "qwen2_5_vl") == {}  # none: every field as configured
    with pytest.raises(DataError, match="unknown protocol 'lmms'"):
        apply_protocol(EvalConfig(protocol="lmms"), "qwen2_5_vl")


def test_an_old_runs_config_resumes_with_the_settings_it_ran_with(tmp_path):
    """config.json as runs wrote it before protocols: no protocol field, today's values written out."""
    old = {
        **{k: v for k, v in vars(EvalConfig()).items() if k not in EVALUATOR_DEFAULTS and k != "protocol"},
        "num_frames": 32,
        "fps": 1.0,
        "target_resolution": [448, 448],
        "max_new_tokens": 512,
        "prompt_type": "default",
        "position_fps": "2.0",
        "mrope_positions": "published",
        "cogmap_max_new_tokens": 512,
    }
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = resume_config(tmp_path, {"resume"}, EvalConfig())
    apply_protocol(config, "qwen2_5_vl")
    assert config.protocol == "none" and effective_settings(config) == EVALUATOR_DEFAULTS


# ---------------------------------------------------------------- runs


@pytest.mark.e2e
def test_a_spatial_r1_run_records_its_protocol_frames_and_deviations(demo_dirs, tmp_path):
    demo = demo_dirs("qwen2_5_vl")
    argv = ["--demo", "--demo_dir", str(demo), "--output_dir_base", str(tmp_path), "--protocol", "spatial_r1"]
    status, run_dir = run_eval([*argv, "--question_types", "object_counting", "route_planning"])
    assert status == 0
    records = read_results(run_dir)
    assert len(records) == 8
    sizes = {scene: (width, height) for _, scene, width, height, _ in DEMO_SCENES}
    for record in records:
        assert record["prompt"].startswith("Question:\n") and record["answer_span"] == "first"
        # The demo's frames are within 448, so only rounded to multiples of 28, as the original did
        height, width = reference_size("spatial_r1", "qwen2_5_vl", *sizes[record["scene_name"]], 32)
        assert record["frame_size"] == [height, width]
        assert record["video_grid_thw"] == [math.ceil(len(record["frame_indices"]) / 2), height // 14, width // 14]
    assert {tuple(r["frame_size"]) for r in records} == {(112, 168), (84, 140), (112, 140)}  # 160x120, 128x96, 144x108
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["protocol"] == "spatial_r1"
    assert summary["settings"]["resize"] == "spatial_r1" and summary["settings"]["max_new_tokens"] == 16
    assert summary["settings"]["generation"]["max_new_tokens"] == 16
    assert summary["settings"]["generation"]["repetition_penalty"] == 1.0  # the demo checkpoint sets none
    log = (run_dir / "vsibench_eval_default.log").read_text()
    assert "settings that deviate from protocol spatial_r1: max_new_tokens 16 (protocol: 512)" in log  # the demo's


@pytest.mark.e2e
def test_an_lmms_eval_run_on_qwen3_vl_sizes_frames_as_lmms_eval(demo_dirs, tmp_path):
    demo = demo_dirs("qwen3_vl")
    argv = ["--demo", "--demo_dir", str(demo), "--demo_family", "qwen3_vl", "--output_dir_base", str(tmp_path)]
    status, run_dir = run_eval([*argv, "--protocol", "lmms_eval", "--question_types", "object_counting"])
    assert status == 0
    records = read_results(run_dir)
    assert records and all(r["answer_span"] == "none" and r["prompt"].startswith("These are frames") for r in records)
    arkit = [r for r in records if r["scene_name"] == "41069025"][0]  # 360 frames of 160 x 120
    assert arkit["frame_indices"][:4] == [0, 12, 23, 35] and len(arkit["frame_indices"]) == 32
    assert arkit["frame_size"] == [416, 544] and arkit["video_grid_thw"] == [16, 26, 34]  # upscaled to min_pixels
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["protocol"] == "lmms_eval"
    assert summary["settings"]["system_prompt"] == "You are a helpful assistant."
    assert summary["settings"]["generation"]["max_new_tokens"] == 16
    assert "no setting deviates from protocol lmms_eval" in (run_dir / "vsibench_eval_default.log").read_text()
