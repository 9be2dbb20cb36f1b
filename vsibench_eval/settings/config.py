"""The run's settings: the fields a user edits (EvalConfig), the command line and the Python API's keywords,
their checks, and the saved config a resumed run reads back. Never imports torch, so that --help and bad flags
answer at once.

Fields that change scores default to None: unset, they take the value of the run's protocol (protocols.py).
"""

import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vsibench_eval.errors import DataError
from vsibench_eval.inputs.prompts import load_prompt_template
from vsibench_eval.model.families import QWEN_VL_MODEL_TYPES
from vsibench_eval.model.hub import is_hub_id
from vsibench_eval.settings.command_line import parse_dataclass
from vsibench_eval.settings.protocols import PROTOCOLS, check_settings


@dataclass
class EvalConfig:
    parquet_file: str = "data/vsibench/test.parquet"  # the VSI-Bench test parquet
    data_file: str | None = None  # used instead of parquet_file when set: .parquet, or Spatial-R1 .json/.jsonl
    video_dir: str = "data/vsibench"  # video of a row: {video_dir}/{dataset}/{scene_name}.mp4 (SR data: relative)
    subset: Literal["full", "debiased", "pruned"] = "full"  # by the parquet's `pruned` column or subset_ids_file
    subset_ids_file: str | None = None  # ids of the questions to evaluate (.txt, .json, .jsonl, .csv, .parquet)
    question_types: list[str] = field(default_factory=list)  # only these question types (all when empty)
    output_dir_base: str = "results"  # run dir: {output_dir_base}/{model basename}/{YYYYmmdd_HHMMSS}/
    model_name: str | list[str] = "Qwen/Qwen2.5-VL-7B-Instruct"  # local checkpoint folder or Hub id; several
    # (or a quoted glob such as 'runs/*/checkpoint-*'): a sweep, one run each
    model_revision: str | None = None  # Hub revision of model_name (default main); config.json records the commit
    gpu_ids: str = "0"  # comma-separated CUDA device ids; worker i uses gpu_ids[i % len(gpu_ids)]
    num_processes: int = 1  # worker processes; the questions are split between them by video
    num_frames: int | None = None  # frames sampled uniformly over the whole video (protocol: 32)
    fps: float | None = None  # > 0 caps the frame count at whole seconds × fps (Spatial-R1's rule); 0 disables
    target_resolution: list[int] | None = None  # resize fit: frames fit inside (H, W); spatial_r1: max(H, W) caps
    batch_size: int = 32  # most questions answered together (the fast decoder's rows, across videos; else per video)
    shared_prefix: bool = True  # encode each video and prefill its prompt prefix once for all its questions
    max_new_tokens: int | None = None  # greedy decoding limit
    prompt_type: Literal["default", "official", "thinking", "gemini_api", "gpt4v", "custom"] | None = None  # the
    # wording of the prompt (docs/protocols.md); custom: read from prompt_template_file
    prompt_template_file: str | None = None  # for prompt_type custom: JSON/YAML with pre_prompt, mca_post_prompt,
    # na_post_prompt
    position_fps: str | None = None  # Qwen2.5-VL time code: a number (fps told to the model), "sampled" or "metadata"
    mrope_positions: Literal["published", "transformers"] | None = None  # rotary positions: the Qwen rule or the
    # installed transformers' own (which differs between releases)
    use_cognitive_map: bool = False  # put a map of the scene's objects before each question
    offload_cogmap: bool = False  # read maps from cogmap_file_path instead of generating them
    cogmap_file_path: str | None = None  # json, jsonl, csv or parquet
    cogmap_id_key: str = "id"  # the file's key column: question id or scene name (matched as text)
    cogmap_cog_key: str = "cognitive_map"  # the file's map column
    cogmap_fallback: Literal["generate", "none"] = "generate"  # for a question without an offloaded map
    cogmap_max_new_tokens: int | None = None  # length limit of a generated map
    debug_mode: bool = False  # evaluate a seeded subset of debug_size questions
    debug_size: int = 64  # how many questions debug_mode evaluates
    seed: int = 42  # the seed of debug_mode's subset
    trust_remote_code: bool = False  # let transformers run code shipped with the checkpoint
    resume: str | None = None  # a run directory to continue with its saved config
    retry_failed: bool = False  # with resume: answer again the questions recorded as failed (e.g. a video fixed since)
    run_dir: str | None = None  # this run's directory instead of a new timestamped one (torchrun: one for all ranks)
    dist_timeout_minutes: float = 720  # torchrun: how long ranks wait for each other before giving up
    demo: bool = False  # build (once) and evaluate a tiny model trained for seconds on a synthetic VSI-Bench set
    demo_dir: str = "demo_data"  # where the demo's model and data live
    demo_family: Literal[QWEN_VL_MODEL_TYPES] = "qwen2_5_vl"  # the demo checkpoint's family: any accepted model type
    download: bool = False  # when parquet_file or video_dir is absent, fetch VSI-Bench from the Hub into data_dir
    dataset: str | None = None  # a Hub dataset id (nyu-visionx/VSI-Bench): fetch it into data_dir and run on it
    dataset_revision: str | None = None  # the Hub revision to fetch (unset: main); config.json records the commit
    data_dir: str | None = None  # where fetched data is unzipped (unset: $HF_HOME/vsibench)
    wandb_project: str | None = None  # log config, per-task scores and results to this W&B project (pip install wandb)
    reference: bool = False  # the log's and a sweep's table: add the published rows of the run's protocol
    protocol: str = "none"  # the evaluation protocol (protocols.py): every score-changing field left unset
    # takes its value; fields set keep theirs and are logged as deviations
    prompt_format: Literal["spatial_r1", "vsibench"] | None = None  # Spatial-R1's "Question:" layout or the task's
    system_prompt: str | None = None  # system message text, or "none": none sent (the chat template's default)
    frame_count: Literal["exact", "even", "even_within_video"] | None = None  # how the frame count is adjusted
    frame_index_rounding: Literal["floor", "round"] | None = None  # linspace positions -> frame indices
    resize: Literal["fit", "spatial_r1", "smart_resize"] | None = None  # how frames are sized (docs/protocols.md)
    min_pixels: int | None = None  # smart_resize: fewest pixels per frame (0: 128 × factor²)
    max_pixels: int | None = None  # smart_resize: most pixels per frame (0: no explicit limit)
    total_pixels: int | None = None  # smart_resize: pixel budget of the whole video (0: none)
    repetition_penalty: str | None = None  # a number, or "checkpoint" (its generation_config.json value)
    eos_tokens: Literal["checkpoint", "tokenizer"] | None = None  # stop ids: generation_config.json's or tokenizer's
    answer_span: Literal["none", "first", "last"] | None = None  # which <answer>...</answer> span is scored
    cogmap_prompt: Literal["evaluator", "spatial_r1"] | None = None  # the prompt asking for a cognitive map
    cogmap_insert: Literal["evaluator", "spatial_r1"] | None = None  # how a map enters the question
    decoder: Literal["hf", "fast"] = "fast"  # greedy decoding by transformers' generate or the static-cache loops
    batch_tokens: int = 131072  # most KV-cache tokens: the fast decoder's arena, or a batch: rows x (video + new)
    progress_seconds: float = 30  # seconds between two progress lines when stderr is not a terminal (a log file)
    video_input: Literal["video", "images"] | None = None  # the frames as one video, or one image per frame in order
    backend: Literal["transformers", "openai"] = "transformers"  # who answers: transformers in this evaluator's
    # processes, or the model behind an OpenAI-compatible server (docs/served.md); model_name: the id it serves
    api_base: str | None = None  # backend openai: the server's /v1 URL, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # backend openai: the environment variable holding the key (never stored)
    api_concurrency: int = 8  # backend openai: requests in flight at once (a local server batches them)
    api_timeout: float = 300  # backend openai: seconds one request may take
    api_retries: int = 5  # backend openai: retries of a request after a connection error, timeout, 429 or 5xx
    served_model_type: Literal[QWEN_VL_MODEL_TYPES] | None = None  # backend openai: the served model's family (its
    # protocol row, its frame sizes), needed when model_name is neither a local checkpoint nor a Hub id


# The fields that name files or folders: config.json keeps them absolute, so that a run resumed from another
# working folder (a requeued job starting in $HOME) reads its own inputs.
PATH_FIELDS = (
    "parquet_file",
    "data_file",
    "video_dir",
    "subset_ids_file",
    "output_dir_base",
    "prompt_template_file",
    "cogmap_file_path",
    "run_dir",
    "demo_dir",
    "data_dir",
)

# What --resume may change: where and how wide the work runs, never what is computed.
RESUME_OVERRIDABLE = {
    "gpu_ids",
    "num_processes",
    "dist_timeout_minutes",
    "wandb_project",
    "reference",
    "progress_seconds",
    "retry_failed",
    # where the server runs and how it is asked, never what it computes
    "api_base",
    "api_key_env",
    "api_concurrency",
    "api_timeout",
    "api_retries",
}


def make_paths_absolute(config: EvalConfig) -> EvalConfig:
    """The config with every path field (PATH_FIELDS) made absolute from the working folder."""
    for name in PATH_FIELDS:
        if getattr(config, name):
            setattr(config, name, os.path.abspath(getattr(config, name)))
    return config


def parse_config(defaults: EvalConfig, argv: list[str]) -> tuple[EvalConfig, set[str]]:
    """Command-line overrides on top of `defaults`; also returns the names of the fields given. A bad flag or
    value exits with status 2 and a message naming the close matches or the choices."""
    return parse_dataclass(
        EvalConfig,
        defaults,
        argv,
        choices={"protocol": PROTOCOLS},
        usage="%(prog)s [--FIELD VALUE ...]",
        description="Evaluate a Qwen-VL model on VSI-Bench. Each flag sets one field of EvalConfig "
        "(vsibench_eval/settings/config.py).",
        epilog="Booleans: --flag, --flag true|false, --no_flag. A field left unset takes its value from the "
        "protocol (docs/protocols.md).",
    )


def check_config(config: EvalConfig) -> None:
    """Reject settings that cannot work, before anything is loaded (after the protocol has filled them in)."""
    check_settings(config)
    if (config.prompt_type == "custom") != bool(config.prompt_template_file):
        raise DataError("prompt_type custom and prompt_template_file go together: set both or neither")
    if config.prompt_template_file:
        load_prompt_template(config.prompt_template_file)
    if config.use_cognitive_map and config.offload_cogmap and not config.cogmap_file_path:
        raise DataError("cogmap_file_path: needed when offload_cogmap is set")
    if len(config.target_resolution) != 2 or min(config.target_resolution) <= 0:
        raise DataError(f"target_resolution: expected two positive sizes (H W), got {config.target_resolution}")
    check_backend(config)
    if not (math.isfinite(config.dist_timeout_minutes) and config.dist_timeout_minutes > 0):
        raise DataError(f"dist_timeout_minutes: expected a positive number, got {config.dist_timeout_minutes}")
    for name in (
        "num_frames",
        "batch_size",
        "max_new_tokens",
        "debug_size",
        "cogmap_max_new_tokens",
        "num_processes",
        "batch_tokens",
        "api_concurrency",
    ):
        if getattr(config, name) < 1:
            raise DataError(f"{name}: must be at least 1, got {getattr(config, name)}")


def check_backend(config: EvalConfig) -> None:
    """The served backend's settings: a server to ask, and limits that can work."""
    if config.backend != "openai":
        return
    if not config.api_base or not config.api_base.startswith(("http://", "https://")):
        raise DataError(f"api_base: backend openai needs the server URL (http://HOST:PORT/v1), got {config.api_base!r}")
    if not (math.isfinite(config.api_timeout) and config.api_timeout > 0):
        raise DataError(f"api_timeout: expected a positive number of seconds, got {config.api_timeout}")
    if config.api_retries < 0:
        raise DataError(f"api_retries: must be 0 or more, got {config.api_retries}")


def resume_config(run_dir: Path, given: set[str], overrides: EvalConfig) -> EvalConfig:
    """The config saved in a run directory. Settings given on the command line must equal the saved ones (a
    requeued job relaunches the same command with --resume added), except those that cannot change results."""
    config = saved_config(run_dir)
    changed = [
        f"{name}: {getattr(config, name)!r} in the saved config, {getattr(overrides, name)!r} given"
        for name in sorted(given - RESUME_OVERRIDABLE - {"resume"})
        if not same_setting(name, getattr(config, name), getattr(overrides, name))
    ]
    if changed:
        raise DataError(f"resume: {run_dir}: what is computed cannot change when resuming: {'; '.join(changed)}")
    for name in given & RESUME_OVERRIDABLE:
        setattr(config, name, getattr(overrides, name))
    config.retry_failed = overrides.retry_failed  # this launch's choice, never a saved one
    config.resume = str(run_dir)
    return config


def same_setting(name: str, saved, given) -> bool:
    """Is a setting given with --resume the one saved? The saved config names files and folders by their absolute
    paths (a relative one given is taken from the working folder), a local checkpoint by its absolute path and a
    Hub model by the commit its revision resolved to."""
    if name == "model_name" and isinstance(given, str) and not is_hub_id(given):
        given = os.path.abspath(given)
    if name in PATH_FIELDS and saved and given:
        return os.path.abspath(saved) == os.path.abspath(given)
    if name == "model_revision" and given is not None and len(given) != 40:
        return True  # a branch or tag: the run goes on with the commit it resolved to when it started
    return saved == given


def saved_config(run_dir: Path) -> EvalConfig:
    """The EvalConfig in {run_dir}/config.json; DataError when the file is missing, not a JSON object, or has
    unknown fields or values of the wrong type."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise DataError(f"resume: {config_file}: not found; is {run_dir} a run directory?")
    try:
        saved = json.loads(config_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"resume: {config_file}: not valid JSON ({error})") from None
    except OSError as error:
        raise DataError(f"resume: {config_file}: cannot read it ({error.strerror})") from None
    if not isinstance(saved, dict):
        raise DataError(f"resume: {config_file}: expected a JSON object of settings, got {type(saved).__name__}")
    saved.pop("inputs", None)  # the inputs' fingerprints, beside the settings (run_dir/fingerprints.py)
    annotations = typing.get_type_hints(EvalConfig)
    unknown = set(saved) - set(annotations)
    if unknown:
        raise DataError(f"resume: {config_file}: unknown field(s) {', '.join(sorted(unknown))}")
    for name, value in saved.items():
        if not has_type(value, annotations[name]):
            raise DataError(f"resume: {config_file}: field {name}: {value!r} is not of type {annotations[name]}")
    return EvalConfig(**saved)


def has_type(value, annotation) -> bool:
    """Does a JSON value fit a field's annotation (str, int, float, bool, list[...], Literal[...], X | None)?"""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(has_type(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this check does not know: accepted as saved


def config_from_keywords(keywords: dict) -> tuple[EvalConfig, set[str]]:
    """The Python API's config: an EvalConfig from keyword arguments, and the names given. DataError naming a field
    that does not exist (with the closest names) or a value not of the field's type."""
    annotations = typing.get_type_hints(EvalConfig)
    for name, value in keywords.items():
        if name not in annotations:
            close = difflib.get_close_matches(name, annotations, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise DataError(
                f"{name}: not a config field{hint} (the fields are EvalConfig's, in vsibench_eval/settings/config.py)"
            )
        if isinstance(value, tuple):
            value = keywords[name] = list(value)
        if not has_type(value, annotations[name]):
            raise DataError(f"{name}: {value!r} is not of type {annotations[name]}")
    return EvalConfig(**keywords), set(keywords)
