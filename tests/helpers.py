"""Helpers the tests share: settled configs, demo videos as chat texts, and running the evaluator as the command
line does."""

import json
from pathlib import Path

from vsibench_eval.entry import main
from vsibench_eval.inputs.frames import load_video
from vsibench_eval.inputs.prompts import build_prompt
from vsibench_eval.inputs.questions import group_by_video, load_questions
from vsibench_eval.model.generation import chat_text
from vsibench_eval.settings.config import EvalConfig
from vsibench_eval.settings.protocols import apply_protocol

# A small demo run (12 questions, several batches per worker) keeps each fault test to one short run.
SMALL = ("--debug_mode", "true", "--debug_size", "12", "--batch_size", "2")


def settled_config(**fields) -> EvalConfig:
    """An EvalConfig as a run uses it: protocol none applied for a Qwen2.5-VL model, so every setting is set."""
    config = EvalConfig(protocol="none", **fields)
    apply_protocol(config, "qwen2_5_vl")
    return config


def video_and_texts(demo, processor, video_number: int) -> tuple:
    """A demo video's frames (32, at most 1 per second, within 448x448) and its questions as chat texts: the
    official prompt for odd video numbers, the thinking prompt for even ones."""
    questions = load_questions(str(demo / "vsibench" / "test.parquet"), str(demo / "vsibench"))
    path, video_questions = list(group_by_video(questions).items())[video_number]
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    video = load_video(path, 32, 1.0, (448, 448), factor)
    prompt_type = "official" if video_number % 2 else "thinking"
    return video, [chat_text(processor, build_prompt(q, prompt_type)) for q in video_questions]


def run_eval(argv: list[str]) -> tuple[int, Path | None]:
    """Run the evaluator as `python eval_qwen.py ARGV` would; returns the exit status and the new run dir."""
    out = Path(argv[argv.index("--output_dir_base") + 1])
    before = set(out.glob("*/*")) if out.exists() else set()
    status = main(EvalConfig(), argv)
    created = sorted(set(out.glob("*/*")) - before) if out.exists() else []
    return status, (created[-1] if created else None)


def read_results(run_dir: Path, prompt_type: str = "default") -> list[dict]:
    path = run_dir / f"vsibench_results_{prompt_type}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def answer_tokens(model, processor, monkeypatch):
    """Make both paths return each row's new token ids up to its first end token instead of text, so the tests
    compare tokens (special ones included), not decoded strings."""
    ends = model.generation_config.eos_token_id
    ends = set(ends) if isinstance(ends, list) else {ends}

    def ids_until_end(tokens, **kwargs):
        rows = []
        for row in tokens:
            row = [int(t) for t in row]
            cut = next((i for i, t in enumerate(row) if t in ends), None)
            rows.append(row if cut is None else row[: cut + 1])
        return rows

    monkeypatch.setattr(processor, "batch_decode", ids_until_end)
