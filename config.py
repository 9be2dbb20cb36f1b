"""The run's settings: the fields a user edits, the command line, their checks, resume's saved config, and
the questions they select. Imports util, cogmap, qwen_vl_utils (and demo_assets for --demo).
"""

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

from cogmap import load_offloaded_maps, offloaded_map
from prompts import load_prompt_template
from qwen_vl_utils import QWEN_VL_MODEL_TYPES
from util import DataError, debug_subset, load_questions, select_question_types, select_subset


@dataclass
class EvalConfig:
    parquet_file: str = "data/vsibench/test.parquet"  # the VSI-Bench test parquet
    data_file: str | None = None  # used instead of parquet_file when set: .parquet, or Spatial-R1 .json/.jsonl
    video_dir: str = "data/vsibench"  # video of a row: {video_dir}/{dataset}/{scene_name}.mp4 (SR data: relative)
    subset: Literal["full", "debiased", "pruned"] = "full"  # by the parquet's `pruned` column or subset_ids_file
    subset_ids_file: str | None = None  # ids of the questions to evaluate (.txt, .json, .jsonl, .csv, .parquet)
    question_types: list[str] = field(default_factory=list)  # only these question types (all when empty)
    output_dir_base: str = "results"  # run dir: {output_dir_base}/{model basename}/{YYYYmmdd_HHMMSS}/
    model_name: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # local checkpoint folder or hub id
    gpu_ids: str = "0"  # comma-separated CUDA device ids; worker i uses gpu_ids[i % len(gpu_ids)]
    num_processes: int = 1  # worker processes; the questions are split between them by video
    num_frames: int = 32  # frames sampled uniformly over the whole video
    fps: float = 1.0  # > 0 caps the frame count at whole seconds × fps (Spatial-R1's rule); 0 disables
    target_resolution: list[int] = field(default_factory=lambda: [448, 448])  # frames fit inside (H, W)
    batch_size: int = 8  # questions of one video answered together (left padding)
    shared_prefix: bool = True  # encode each video and prefill its prompt prefix once for all its questions
    max_new_tokens: int = 512
    prompt_type: Literal["default", "official", "thinking", "gemini_api", "gpt4v", "custom"] = "default"
    prompt_template_file: str | None = None  # for prompt_type custom: JSON/YAML with pre_prompt, mca_post_prompt,
    # na_post_prompt
    position_fps: str = "2.0"  # Qwen2.5-VL time code: a number (fps told to the model) or "sampled"
    mrope_positions: Literal["published", "transformers"] = "published"  # rotary positions: the Qwen rule or the
    # installed transformers' own (which differs between releases)
    use_cognitive_map: bool = False  # put a map of the scene's objects before each question
    offload_cogmap: bool = False  # read maps from cogmap_file_path instead of generating them
    cogmap_file_path: str | None = None  # json, jsonl, csv or parquet
    cogmap_id_key: str = "id"  # the file's key column: question id or scene name (matched as text)
    cogmap_cog_key: str = "cognitive_map"  # the file's map column
    cogmap_fallback: Literal["generate", "none"] = "generate"  # for a question without an offloaded map
    cogmap_max_new_tokens: int = 512  # length limit of a generated map
    debug_mode: bool = False  # evaluate a seeded subset of debug_size questions
    debug_size: int = 64
    seed: int = 42
    trust_remote_code: bool = False  # let transformers run code shipped with the checkpoint
    resume: str | None = None  # a run directory to continue with its saved config
    run_dir: str | None = None  # this run's directory instead of a new timestamped one (torchrun: one for all ranks)
    dist_timeout_minutes: float = 720  # torchrun: how long ranks wait for each other before giving up
    demo: bool = False  # build (once) and evaluate a tiny random model on a synthetic VSI-Bench-shaped set
    demo_dir: str = "demo_data"  # where the demo's model and data live
    demo_family: Literal[QWEN_VL_MODEL_TYPES] = "qwen2_5_vl"  # the demo checkpoint's family: any accepted model type


# What --resume may change: where and how wide the work runs, never what is computed.
RESUME_OVERRIDABLE = {"gpu_ids", "num_processes", "dist_timeout_minutes"}

# What --demo sets, unless the same flag is given on the command line.
DEMO_SETTINGS = {"num_processes": 1, "batch_size": 4, "max_new_tokens": 16, "output_dir_base": "demo_runs"}


def parse_config(defaults: EvalConfig, argv: list[str]) -> tuple[EvalConfig, set[str]]:
    """Command-line overrides on top of `defaults`; also returns the names of the fields given."""
    parser = HfArgumentParser(EvalConfig)
    parser.set_defaults(**asdict(defaults))
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    names = {f.name for f in fields(EvalConfig)}
    given = {arg[2:].split("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    given |= {name[3:] for name in given if name.startswith("no_")}
    return config, given & names


def apply_demo(config: EvalConfig, given: set[str]) -> EvalConfig:
    """Point the config at the demo assets, building them on first use."""
    from demo_assets import ensure_demo

    paths = ensure_demo(config.demo_dir, family=config.demo_family)
    config.model_name, config.parquet_file, config.data_file = str(paths["model"]), str(paths["parquet"]), None
    config.video_dir = str(paths["video_dir"])
    for name, value in DEMO_SETTINGS.items():
        if name not in given:
            setattr(config, name, value)
    return config


def check_config(config: EvalConfig) -> None:
    """Reject settings that cannot work, before anything is loaded."""
    if (config.prompt_type == "custom") != bool(config.prompt_template_file):
        raise DataError("prompt_type custom and prompt_template_file go together: set both or neither")
    if config.prompt_template_file:
        load_prompt_template(config.prompt_template_file)
    if config.use_cognitive_map and config.offload_cogmap and not config.cogmap_file_path:
        raise DataError("cogmap_file_path: needed when offload_cogmap is set")
    if len(config.target_resolution) != 2 or min(config.target_resolution) <= 0:
        raise DataError(f"target_resolution: expected two positive sizes (H W), got {config.target_resolution}")
    if config.position_fps != "sampled" and not is_positive_number(config.position_fps):
        raise DataError(f"position_fps: expected a positive number or 'sampled', got {config.position_fps!r}")
    for name in ("num_frames", "batch_size", "max_new_tokens", "debug_size", "cogmap_max_new_tokens"):
        if getattr(config, name) < 1:
            raise DataError(f"{name}: must be at least 1, got {getattr(config, name)}")
    if not os.path.isdir(config.video_dir):
        raise DataError(f"video_dir: {config.video_dir}: no such directory")
    check_model(config.model_name)


def is_positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def check_model(model_name: str) -> None:
    """The model must be a Qwen-VL checkpoint: a local folder with its config.json, or a hub id."""
    looks_local = model_name.startswith(("/", ".", "~")) or model_name.count("/") != 1
    if os.path.isdir(model_name):
        config_file = os.path.join(model_name, "config.json")
        if not os.path.isfile(config_file):
            raise DataError(f"model_name: {model_name}: no config.json, not a model checkpoint")
        with open(config_file) as handle:
            model_type = json.load(handle).get("model_type")
        if model_type not in QWEN_VL_MODEL_TYPES:
            raise DataError(
                f"model_name: {config_file}: model_type {model_type!r} is not a Qwen-VL model "
                f"({', '.join(QWEN_VL_MODEL_TYPES)})"
            )
    elif looks_local:
        raise DataError(f"model_name: {model_name}: no such directory")


def resume_config(run_dir: Path, given: set[str], overrides: EvalConfig) -> EvalConfig:
    """The config saved in a run directory; only settings that cannot change results may be overridden."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise DataError(f"resume: {config_file}: not found; is {run_dir} a run directory?")
    saved = json.loads(config_file.read_text())
    unknown = set(saved) - {f.name for f in fields(EvalConfig)}
    if unknown:
        raise DataError(f"resume: {config_file}: unknown field(s) {', '.join(sorted(unknown))}")
    changed = given - RESUME_OVERRIDABLE - {"resume"}
    if changed:
        raise DataError(f"resume: {', '.join(sorted(changed))} cannot change when resuming {run_dir}")
    config = EvalConfig(**saved)
    for name in given & RESUME_OVERRIDABLE:
        setattr(config, name, getattr(overrides, name))
    config.resume = str(run_dir)
    return config


def select_questions(config: EvalConfig) -> tuple[list[dict], str]:
    """The questions this run evaluates, and a sentence saying which subset they are."""
    data_file = config.data_file or config.parquet_file
    questions = load_questions(data_file, config.video_dir)
    steps = [f"{data_file}: {len(questions)} questions"]
    if config.subset != "full" or config.subset_ids_file:
        questions = select_subset(questions, config.subset, config.subset_ids_file, data_file)
        source = config.subset_ids_file or "the pruned column"
        steps.append(f"subset {config.subset} ({source}): {len(questions)}")
    if config.question_types:
        questions = select_question_types(questions, config.question_types)
        steps.append(f"question types {', '.join(config.question_types)}: {len(questions)}")
    if config.debug_mode:
        questions = debug_subset(questions, config.debug_size, config.seed)
        steps.append(f"debug subset (seed {config.seed}): {len(questions)}")
    if not questions:
        raise DataError(f"{data_file}: no questions left to evaluate ({'; '.join(steps)})")
    if config.use_cognitive_map and config.offload_cogmap:
        maps = load_offloaded_maps(config.cogmap_file_path, config.cogmap_id_key, config.cogmap_cog_key)
        for question in questions:
            question["offloaded_cogmap"] = offloaded_map(maps, question)
    return questions, "; ".join(steps)


def prepare(config: EvalConfig, given: set[str]) -> tuple[EvalConfig, list[dict], str]:
    """The run's final config (a resumed run's saved one, or the demo's), checked, and its questions."""
    if config.resume:
        config = resume_config(Path(config.resume), given, config)
    elif config.demo:
        config = apply_demo(config, given)
    check_config(config)
    questions, selection = select_questions(config)
    return config, questions, selection
