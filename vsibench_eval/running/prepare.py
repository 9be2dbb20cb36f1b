"""Preparing a run before anything is loaded: its data found (the demo's, the Hub's, or as configured), its
model resolved (a Hub id downloaded once, a local path made absolute), its protocol applied and settings
checked, and its questions selected (subset, question types, debug subset, offloaded cognitive maps)."""

import json
import os
from pathlib import Path

from vsibench_eval.errors import DataError
from vsibench_eval.inputs.cogmap import load_offloaded_maps, offloaded_map
from vsibench_eval.inputs.download import HOW_TO_GET_DATA, HUB_DATASET, ensure_vsibench
from vsibench_eval.inputs.questions import debug_subset, load_questions, select_question_types, select_subset
from vsibench_eval.model.families import QWEN_VL_MODEL_TYPES
from vsibench_eval.model.hub import is_hub_id, resolve_hub_model
from vsibench_eval.scoring.tracking import require_wandb
from vsibench_eval.settings.config import EvalConfig, check_config, make_paths_absolute, resume_config
from vsibench_eval.settings.protocols import apply_protocol

# What --demo sets, unless the same flag is given on the command line.
DEMO_SETTINGS = {"num_processes": 1, "batch_size": 4, "max_new_tokens": 16, "output_dir_base": "demo_runs"}


def apply_demo(config: EvalConfig, given: set[str]) -> EvalConfig:
    """Point the config at the demo assets, building them on first use."""
    from vsibench_eval.demo.assets import ensure_demo

    paths = ensure_demo(config.demo_dir, family=config.demo_family)
    if "model_name" not in given:  # given: e.g. a sweep of checkpoints on the demo's data
        config.model_name = str(paths["model"])
    config.parquet_file, config.data_file = str(paths["parquet"]), None
    config.video_dir = str(paths["video_dir"])
    for name, value in DEMO_SETTINGS.items():
        if name not in given:
            setattr(config, name, value)
    return config


def model_type_of(model_name: str, trust_remote_code: bool = False) -> str:
    """The checkpoint's model_type: from the config.json of a local folder (a resolved Hub snapshot is one), else
    from the hub's (cached) config. A local path that is not a Qwen-VL checkpoint is a DataError naming the file."""
    looks_local = not is_hub_id(model_name)
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
        return model_type
    if looks_local:
        raise DataError(f"model_name: {model_name}: no such directory")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_name, trust_remote_code=trust_remote_code).model_type
    except OSError as error:
        raise DataError(f"model_name: {model_name}: cannot read its config ({error})") from None


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


def prepare(
    config: EvalConfig, given: set[str], selected: tuple | None = None, model_type: str | None = None
) -> tuple[EvalConfig, list[dict], str, str]:
    """The run's final config (a resumed run's saved one, or the demo's; its model resolved; unset fields from its
    protocol), checked, its questions, their selection and the model's type. `selected`: (questions, selection)
    already chosen from the data that `config` names (a sweep chooses them once: find_data, select_questions);
    `model_type`: the model's, when it is known already (a model given in memory, or resolved by the sweep)."""
    if config.resume:
        config = resume_config(Path(config.resume), given, config)
    elif selected is None:
        config = find_data(config, given)
    check_video_dir(config)  # local files are checked before the model's config is looked up
    model_type = model_type or resolve_model(config)
    apply_protocol(config, model_type)
    check_config(config)
    if config.wandb_project:
        require_wandb()  # a missing tracker is named before anything is loaded
    questions, selection = selected or select_questions(config)
    return config, questions, selection, model_type


def find_data(config: EvalConfig, given: set[str]) -> EvalConfig:
    """Point the config at its data: the demo's (built on first use), the Hub's (locate_data), or as configured;
    every path made absolute."""
    if config.demo:
        apply_demo(config, given)
    else:
        locate_data(config)
    return make_paths_absolute(config)


def check_video_dir(config: EvalConfig) -> None:
    if not os.path.isdir(config.video_dir):
        raise DataError(f"video_dir: {config.video_dir}: no such directory; {HOW_TO_GET_DATA}")


def resolve_model(config: EvalConfig) -> str:
    """Make the run's checkpoint loadable by every worker without the Hub, and return its model_type. A Hub id is
    downloaded (or found in the cache) once, here, and model_revision set to the snapshot's commit (so config.json
    records it); a local folder's path is made absolute (config.json always names it in full). A served model
    (backend openai) is not loaded here: its family is found (served_model_family) and its name kept as given."""
    if config.backend == "openai":
        return served_model_family(config)
    if not isinstance(config.model_name, str):
        raise DataError(f"model_name: one checkpoint per run, got {config.model_name!r}")
    if is_hub_id(config.model_name):
        folder, config.model_revision = resolve_hub_model(config.model_name, config.model_revision)
        return model_type_of(folder, config.trust_remote_code)
    model_type = model_type_of(config.model_name, config.trust_remote_code)
    config.model_name = os.path.abspath(config.model_name)
    return model_type


def served_model_family(config: EvalConfig) -> str:
    """The served model's model_type: served_model_type when given, else read from model_name when that is a
    local checkpoint (transformers serve and vLLM serve a folder under its path) or a Hub id. Set in the config,
    so that workers and config.json have it."""
    if not config.served_model_type:
        if not (os.path.isdir(config.model_name) or is_hub_id(config.model_name)):
            raise DataError(
                f"served_model_type: needed for served model {config.model_name!r}, which is neither a local "
                f"checkpoint nor a Hub id: give its family ({', '.join(QWEN_VL_MODEL_TYPES)})"
            )
        config.served_model_type = model_type_of(config.model_name, config.trust_remote_code)
    return config.served_model_type


def locate_data(config: EvalConfig) -> None:
    """Point the config at VSI-Bench fetched from the Hub: with --dataset, or with --download when the
    configured data is absent. The resolved revision goes into the config, so config.json records it."""
    data_file = config.data_file or config.parquet_file
    absent = not (os.path.isfile(data_file) and os.path.isdir(config.video_dir))
    if not (config.dataset or (config.download and absent)):
        if not os.path.isfile(data_file):
            raise DataError(f"{data_file}: data file not found; {HOW_TO_GET_DATA}")
        return
    fetched = ensure_vsibench(config.dataset or HUB_DATASET, config.dataset_revision, config.data_dir)
    config.parquet_file, config.data_file = str(fetched["parquet"]), None
    config.video_dir, config.dataset_revision = str(fetched["video_dir"]), fetched["revision"]
