"""Question records: reading and checking the data file (VSI-Bench parquet or Spatial-R1 JSON), subsets, the
seeded debug subset, grouping and sharding by video, JSONL reading."""

import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np

from vsibench_eval.errors import DataError
from vsibench_eval.metric import ANSWER_SPAN, MCA_QUESTION_TYPES, NA_QUESTION_TYPES

REQUIRED_COLUMNS = ("id", "dataset", "scene_name", "question_type", "question", "ground_truth", "options")


SUBSETS = ("full", "debiased", "pruned")


def read_records(path: str) -> list[dict]:
    """Rows of a .json (a list of objects), .jsonl, .csv or .parquet file. Never pickle: a data file must
    not be able to run code."""
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    if suffix in (".parquet", ".csv"):
        return read_table(path).to_dict("records")
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        data = Path(path).read_bytes()
        try:
            rows = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text (byte {error.start + 1})") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of records")
        return rows
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .csv or .parquet")


def read_table(path: str):
    """A .parquet or .csv file as a pandas DataFrame; DataError when it is empty, corrupt or not UTF-8."""
    import pandas as pd  # loaded when a table is read, not by every command (--help answers at once)

    try:
        return pd.read_parquet(path) if Path(path).suffix.lower() == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid and pandas' parser errors are ValueErrors
        raise DataError(f"{path}: cannot read the table ({type(error).__name__}: {error})") from None


def read_objects(path: str) -> list[dict]:
    """read_records' rows, each checked to be an object (a mapping of column to value)."""
    rows = read_records(path)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number}: expected an object of columns, got {type(row).__name__} {row!r}")
    return rows


def load_questions(data_file: str, video_dir: str) -> list[dict]:
    """Question records sorted by id, each with its video's path, from a VSI-Bench parquet or a Spatial-R1
    / Video-R1 style .json or .jsonl file (chosen by the extension).

    Every row is checked; a bad one raises DataError naming the file, the row id and the column.
    """
    suffix = Path(data_file).suffix.lower()
    if suffix not in (".parquet", ".json", ".jsonl"):
        raise DataError(f"{data_file}: expected a .parquet (VSI-Bench) or .json/.jsonl (Spatial-R1 format) file")
    if not Path(data_file).is_file():
        raise DataError(f"{data_file}: data file not found")
    if suffix == ".parquet":
        frame = read_table(data_file)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{data_file}: missing column(s) {', '.join(missing)}")
        rows = frame.to_dict("records")
    else:
        rows = read_objects(data_file)
    questions, seen = [], set()
    for index, row in enumerate(rows):
        if suffix == ".parquet":
            record = question_record(row, data_file)
            relative = os.path.join(record["dataset"], f"{record['scene_name']}.mp4")
            if "pruned" in row and row["pruned"] is not None:
                record["pruned"] = bool(row["pruned"])
        else:
            vsi_row, relative = sr_row(row, data_file, index)
            record = question_record(vsi_row, data_file)
        if record["id"] in seen:
            raise DataError(f"{data_file}: row id {record['id']}: column 'id': duplicate id")
        seen.add(record["id"])
        record["video_path"] = os.path.join(video_dir, relative)
        questions.append(record)
    return sorted(questions, key=lambda q: q["id"])


def sr_row(row: dict, data_file: str, index: int) -> tuple[dict, str]:
    """A Spatial-R1 record ({"problem_id", "problem", "problem_type": ["object_counting"], "solution":
    "<answer>7</answer>", "video_filename": "scannet/scene0653_00.mp4"}) or a Video-R1 one (problem_type
    "multiple choice" or "numerical", an "options" list, "path") in the VSI-Bench row shape, and the video's
    path relative to video_dir."""
    row_id = row.get("problem_id", f"#{index} (no problem_id)")

    def fail(column: str, why: str) -> DataError:
        return DataError(f"{data_file}: row id {row_id}: column '{column}': {why}")

    for column in ("problem_id", "problem", "problem_type", "solution"):
        if row.get(column) is None:
            raise fail(column, "missing")
    if row.get("data_type", "video") != "video":
        raise fail("data_type", f"only video questions can be evaluated, got {row['data_type']!r}")
    relative = row.get("video_filename") or row.get("path")
    if not relative:
        raise fail("video_filename", "missing (and no 'path')")
    relative = str(relative).removeprefix("./")
    check_inside_video_dir(relative, "video_filename" if row.get("video_filename") else "path", fail)
    problem_type = row["problem_type"]
    question_type = problem_type[0] if isinstance(problem_type, list) and problem_type else problem_type
    solution = ANSWER_SPAN.search(str(row["solution"]))
    if not solution:
        raise fail("solution", f"no <answer>...</answer> span in {row['solution']!r}")
    question, options = str(row["problem"]).removeprefix("Question:\n"), row.get("options")
    if options is None and "\nOptions:\n" in question:  # options written into the problem text
        question, listed = question.split("\nOptions:\n", 1)
        options = [line for line in listed.splitlines() if line.strip()]
    parts = Path(relative).parts
    return {
        "id": row["problem_id"],
        "dataset": parts[0] if len(parts) > 1 else "video",
        "scene_name": Path(relative).stem,
        "question_type": question_type,
        "question": question,
        "ground_truth": solution.group(1).strip(),
        "options": options,
    }, relative


def question_record(row: dict, data_file: str) -> dict:
    """One checked question record from one data-file row."""
    row_id = row["id"]

    def fail(column: str, why: str) -> DataError:
        return DataError(f"{data_file}: row id {row_id}: column '{column}': {why}")

    if isinstance(row_id, float) and not row_id.is_integer():  # int() would silently truncate 12.5 to 12
        raise fail("id", f"not an integer: {row_id!r}")
    try:
        qid = int(row_id)
    except (TypeError, ValueError):
        raise fail("id", f"not an integer: {row_id!r}") from None
    qtype = row["question_type"]
    if not isinstance(qtype, str):  # e.g. a parquet list: `in` on an array compares element-wise and passes
        shown = list(qtype) if isinstance(qtype, np.ndarray) else qtype
        raise fail("question_type", f"expected one question type as text, got {type(qtype).__name__} {shown!r}")
    if qtype not in MCA_QUESTION_TYPES + NA_QUESTION_TYPES:
        raise fail("question_type", f"unknown question type {qtype!r}")
    for column in ("dataset", "scene_name", "question"):
        if not isinstance(row[column], str) or not row[column]:
            raise fail(column, f"expected a non-empty string, got {row[column]!r}")
    for column in ("dataset", "scene_name"):
        check_inside_video_dir(row[column], column, fail)
    ground_truth = row["ground_truth"]
    if ground_truth is None or (isinstance(ground_truth, float) and math.isnan(ground_truth)):
        raise fail("ground_truth", "missing")
    ground_truth = str(ground_truth)
    options = row["options"]
    if qtype in MCA_QUESTION_TYPES:
        options = option_list(options, fail)
        letters = option_letters(options)
        if ground_truth.upper() not in letters:
            raise fail("ground_truth", f"{ground_truth!r} is not one of the options' letters ({', '.join(letters)})")
    else:
        try:
            number = float(ground_truth)
        except ValueError:
            raise fail("ground_truth", f"numerical ground truth is not a number: {ground_truth!r}") from None
        if not math.isfinite(number):
            raise fail("ground_truth", f"numerical ground truth is not a finite number: {ground_truth!r}")
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


def check_inside_video_dir(relative: str, column: str, fail) -> None:
    """A video path taken from the data must stay inside video_dir: no absolute path, no '..'."""
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise fail(column, f"{relative!r} leads outside video_dir (absolute, or with '..')")


OPTION_LETTER = re.compile(r"([A-Z])\.")  # "A. Back" carries the letter A


def option_list(options, fail) -> list[str]:
    """A multiple-choice row's options as a list of strings. Besides a list (or array), one string is read
    when it holds a JSON list or one option per line; any other string is refused, since reading it as a
    list would split it into characters."""
    if isinstance(options, str):
        text = options.strip()
        if text.startswith("["):
            try:
                options = json.loads(text)
            except json.JSONDecodeError:
                raise fail("options", f"a string that starts like a JSON list but is not one: {text!r}") from None
            if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
                raise fail("options", f"expected a JSON list of strings, got {text!r}")
        elif "\n" in text:
            options = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            raise fail("options", f"one string that is neither a JSON list nor one option per line: {text!r}")
    if not isinstance(options, list | tuple | np.ndarray) or len(options) == 0:
        raise fail("options", "multiple-choice question without options")
    return [str(option) for option in options]


def option_letters(options: list[str]) -> list[str]:
    """The letters the options carry ("A. Back" -> A); options written without letters are A, B, C, ... in order."""
    letters = [match.group(1) if (match := OPTION_LETTER.match(option.strip())) else None for option in options]
    return letters if all(letters) else [chr(ord("A") + i) for i in range(len(options))]


def read_ids(path: str) -> set[int]:
    """Question ids from a .txt file (one per line), a .json list (of ids or of records with "id"), or a
    .jsonl/.csv/.parquet file with an "id" column."""
    if Path(path).suffix.lower() == ".txt":
        if not Path(path).is_file():
            raise DataError(f"{path}: file not found")
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text (byte {error.start + 1})") from None
        values = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        values = [row["id"] if isinstance(row, dict) else row for row in read_records(path)]
    try:
        return {int(value) for value in values}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: expected question ids (integers, or records with an 'id')") from None


def select_subset(questions: list[dict], subset: str, ids_file: str | None, data_file: str) -> list[dict]:
    """VSI-Bench's subsets: the ids listed in `ids_file` when given, else by the parquet's `pruned` column
    (debiased: the questions kept, pruned: the ones removed); `full` keeps everything."""
    if ids_file:
        ids = read_ids(ids_file)
        unknown = ids - {q["id"] for q in questions}
        if unknown:
            raise DataError(f"{ids_file}: {len(unknown)} id(s) not in {data_file}, e.g. {sorted(unknown)[:5]}")
        return [q for q in questions if q["id"] in ids]
    if subset == "full":
        return questions
    if subset not in SUBSETS:
        raise DataError(f"subset: unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    if any("pruned" not in q for q in questions):
        raise DataError(f"{data_file}: no 'pruned' column for subset {subset!r}; give subset_ids_file instead")
    return [q for q in questions if q["pruned"] == (subset == "pruned")]


def select_question_types(questions: list[dict], question_types: list[str]) -> list[dict]:
    """Only the questions of the given types (all when the list is empty)."""
    unknown = set(question_types) - set(MCA_QUESTION_TYPES + NA_QUESTION_TYPES)
    if unknown:
        raise DataError(f"question_types: unknown type(s) {', '.join(sorted(unknown))}")
    return [q for q in questions if not question_types or q["question_type"] in question_types]


def debug_subset(questions: list[dict], size: int, seed: int) -> list[dict]:
    """A seeded sample of `size` questions, drawn from the id-sorted list so row order cannot change it."""
    ordered = sorted(questions, key=lambda q: q["id"])
    chosen = random.Random(seed).sample(ordered, min(size, len(ordered)))
    return sorted(chosen, key=lambda q: q["id"])


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


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file; DataError names the file and the line that is not UTF-8 JSON."""
    records = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: line {line_number}: not UTF-8 text (byte {error.start + 1})") from None
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
    return records
