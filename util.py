"""Question records: loading and checking the data file, subsets, sharding, prompts, answers, JSONL I/O."""

import json
import math
import os
import random
import re
from pathlib import Path

import pandas as pd

MCA_QUESTION_TYPES = (
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "object_rel_distance",
    "route_planning",
    "obj_appearance_order",
)
NA_QUESTION_TYPES = (
    "object_abs_distance",
    "object_counting",
    "object_size_estimation",
    "room_size_estimation",
)
REQUIRED_COLUMNS = ("id", "dataset", "scene_name", "question_type", "question", "ground_truth", "options")


class DataError(ValueError):
    """Bad input: the message names the file, the row id and the column."""


# ---------------------------------------------------------------- data file -> question records


def load_questions(data_file: str, video_dir: str) -> list[dict]:
    """Read a VSI-Bench parquet into question records sorted by id, each with its video's path.

    Every row is checked; a bad one raises DataError naming the file, the row id and the column.
    """
    path = Path(data_file)
    if not path.is_file():
        raise DataError(f"{data_file}: data file not found")
    if path.suffix != ".parquet":
        raise DataError(f"{data_file}: expected a .parquet file")
    frame = pd.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{data_file}: missing column(s) {', '.join(missing)}")

    questions, seen = [], set()
    for row in frame.to_dict("records"):
        record = question_record(row, data_file)
        if record["id"] in seen:
            raise DataError(f"{data_file}: row id {record['id']}: column 'id': duplicate id")
        seen.add(record["id"])
        record["video_path"] = os.path.join(video_dir, record["dataset"], f"{record['scene_name']}.mp4")
        questions.append(record)
    return sorted(questions, key=lambda q: q["id"])


def question_record(row: dict, data_file: str) -> dict:
    """One checked question record from one data-file row."""
    row_id = row["id"]

    def fail(column: str, why: str) -> DataError:
        return DataError(f"{data_file}: row id {row_id}: column '{column}': {why}")

    try:
        qid = int(row_id)
    except (TypeError, ValueError):
        raise fail("id", f"not an integer: {row_id!r}") from None
    qtype = row["question_type"]
    if qtype not in MCA_QUESTION_TYPES + NA_QUESTION_TYPES:
        raise fail("question_type", f"unknown question type {qtype!r}")
    for column in ("dataset", "scene_name", "question"):
        if not isinstance(row[column], str) or not row[column]:
            raise fail(column, f"expected a non-empty string, got {row[column]!r}")
    ground_truth = row["ground_truth"]
    if ground_truth is None or (isinstance(ground_truth, float) and math.isnan(ground_truth)):
        raise fail("ground_truth", "missing")
    ground_truth = str(ground_truth)
    options = row["options"]
    if qtype in MCA_QUESTION_TYPES:
        if options is None or len(options) == 0:
            raise fail("options", "multiple-choice question without options")
        options = [str(o) for o in options]
    else:
        try:
            float(ground_truth)
        except ValueError:
            raise fail("ground_truth", f"numerical ground truth is not a number: {ground_truth!r}") from None
        options = None
    return {
        "id": qid,
        "dataset": row["dataset"],
        "scene_name": row["scene_name"],
        "question_type": qtype,
        "question": row["question"],
        "options": options,
        "ground_truth": ground_truth,
    }


def debug_subset(questions: list[dict], size: int, seed: int) -> list[dict]:
    """A seeded sample of `size` questions, drawn from the id-sorted list so row order cannot change it."""
    ordered = sorted(questions, key=lambda q: q["id"])
    chosen = random.Random(seed).sample(ordered, min(size, len(ordered)))
    return sorted(chosen, key=lambda q: q["id"])


# ---------------------------------------------------------------- grouping and sharding


def group_by_video(questions: list[dict]) -> dict[str, list[dict]]:
    """Questions of each video, videos in order of their first question id, questions by id."""
    groups: dict[str, list[dict]] = {}
    for question in sorted(questions, key=lambda q: q["id"]):
        groups.setdefault(question["video_path"], []).append(question)
    return groups


def shard_by_video(questions: list[dict], num_shards: int) -> list[list[dict]]:
    """Split questions into `num_shards` shards balanced by question count, a video's questions together.

    Greedy: the largest video goes to the currently lightest shard. Deterministic for a given input.
    """
    groups = group_by_video(questions)
    order = sorted(groups, key=lambda video: (-len(groups[video]), video))
    shards: list[list[dict]] = [[] for _ in range(num_shards)]
    for video in order:
        lightest = min(range(num_shards), key=lambda i: (len(shards[i]), i))
        shards[lightest].extend(groups[video])
    return [sorted(shard, key=lambda q: q["id"]) for shard in shards]


# ---------------------------------------------------------------- prompts

OFFICIAL_PRE_PROMPT = "These are frames of a video."
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
API_NA_POST_PROMPT = "Do not response anything other than a single number!"  # sic, as published
THINKING_MCA_POST_PROMPT = (
    "First output the thinking process in <think> </think> tags and then output an option letter "
    "in <answer> </answer> tags."
)
THINKING_NA_POST_PROMPT = (
    "First output the thinking process in <think> </think> tags and then output a number in <answer> </answer> tags."
)
# Spatial-R1's prompt types: pre_prompt + "Question:\n" + question [+ "\nOptions:\n" + options] + "\n" + post.
PROMPT_TEMPLATES = {
    "default": {"pre_prompt": "", "mca_post_prompt": MCA_POST_PROMPT, "na_post_prompt": NA_POST_PROMPT},
    "thinking": {
        "pre_prompt": "",
        "mca_post_prompt": THINKING_MCA_POST_PROMPT,
        "na_post_prompt": THINKING_NA_POST_PROMPT,
    },
    "gemini_api": {"pre_prompt": "", "mca_post_prompt": MCA_POST_PROMPT, "na_post_prompt": API_NA_POST_PROMPT},
    "gpt4v": {"pre_prompt": "", "mca_post_prompt": MCA_POST_PROMPT, "na_post_prompt": API_NA_POST_PROMPT},
}
PROMPT_TYPES = ("default", "official", "thinking", "gemini_api", "gpt4v")


def build_prompt(question: dict, prompt_type: str) -> str:
    """The text that follows the video in the user message."""
    is_mca = question["question_type"] in MCA_QUESTION_TYPES
    if prompt_type == "official":  # the VSI-Bench paper's wording
        lines = [OFFICIAL_PRE_PROMPT, question["question"]]
        if is_mca:
            lines += ["Options:", *question["options"], MCA_POST_PROMPT]
        else:
            lines.append(NA_POST_PROMPT)
        return "\n".join(lines)
    if prompt_type not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt_type {prompt_type!r}; choose from {', '.join(PROMPT_TYPES)}")
    template = PROMPT_TEMPLATES[prompt_type]
    text = template["pre_prompt"] + "Question:\n" + question["question"]
    if is_mca:
        text += "\nOptions:\n" + "\n".join(question["options"])
    return text + "\n" + (template["mca_post_prompt"] if is_mca else template["na_post_prompt"])


# ---------------------------------------------------------------- answers

ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(prediction: str) -> str:
    """The text of the last <answer>...</answer> span, stripped, when there is one; else the raw prediction."""
    spans = ANSWER_SPAN.findall(prediction or "")
    return spans[-1].strip() if spans else (prediction or "")


# ---------------------------------------------------------------- JSONL


def read_jsonl(path: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
    return records


def write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
