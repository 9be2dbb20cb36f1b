"""Data loading and checking, subsets, sharding, prompts and answer extraction."""

import pandas as pd
import pytest

from vsibench_eval.errors import DataError
from vsibench_eval.inputs.prompts import build_prompt
from vsibench_eval.inputs.questions import debug_subset, group_by_video, load_questions, shard_by_video
from vsibench_eval.metric import extract_answer

ROWS = [
    {
        "id": 7,
        "dataset": "scannet",
        "scene_name": "scene0001_00",
        "question_type": "object_counting",
        "question": "How many chair(s) are in this room?",
        "ground_truth": "4",
        "options": None,
    },
    {
        "id": 3,
        "dataset": "arkitscenes",
        "scene_name": "41069025",
        "question_type": "object_rel_distance",
        "question": "Which is closest to the sofa?",
        "ground_truth": "B",
        "options": ["A. tv", "B. lamp", "C. bed"],
    },
]


def write_parquet(path, rows):
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def test_load_questions_sorted_by_id_with_video_path(tmp_path):
    questions = load_questions(write_parquet(tmp_path / "t.parquet", ROWS), "/videos")
    assert [q["id"] for q in questions] == [3, 7]
    assert questions[0]["video_path"] == "/videos/arkitscenes/41069025.mp4"
    assert questions[0]["options"] == ["A. tv", "B. lamp", "C. bed"]
    assert questions[1]["options"] is None and questions[1]["ground_truth"] == "4"


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"question_type": "object_colour"}, "row id 7: column 'question_type'"),
        ({"ground_truth": "four"}, "row id 7: column 'ground_truth'"),
        ({"id": 3}, "row id 3: column 'id': duplicate"),
    ],
)
def test_bad_rows_name_file_row_and_column(tmp_path, change, needle):
    rows = [ROWS[0] | change, ROWS[1]]
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError) as caught:
        load_questions(path, "/videos")
    assert needle in str(caught.value) and "bad.parquet" in str(caught.value)


def test_multiple_choice_without_options_is_rejected(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", [ROWS[0], ROWS[1] | {"options": None}])
    with pytest.raises(DataError, match="row id 3: column 'options'"):
        load_questions(path, "/videos")


def test_missing_column_is_rejected(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", [{k: v for k, v in r.items() if k != "question"} for r in ROWS])
    with pytest.raises(DataError, match="missing column.*question"):
        load_questions(path, "/videos")


def many_questions(n_videos=7):
    questions = []
    for v in range(n_videos):
        for k in range(v + 2):  # videos of different sizes
            questions.append({"id": 100 * v + k, "video_path": f"/v/{v}.mp4"})
    return questions


def test_debug_subset_is_seeded_and_order_independent():
    questions = many_questions()
    a = debug_subset(questions, 10, seed=1)
    b = debug_subset(list(reversed(questions)), 10, seed=1)
    assert [q["id"] for q in a] == [q["id"] for q in b] and len(a) == 10
    assert [q["id"] for q in debug_subset(questions, 10, seed=2)] != [q["id"] for q in a]


def test_shards_keep_videos_whole_and_are_balanced():
    questions = many_questions()
    shards = shard_by_video(questions, 3)
    assert sorted(q["id"] for s in shards for q in s) == sorted(q["id"] for q in questions)
    owner = {}
    for rank, shard in enumerate(shards):
        for q in shard:
            assert owner.setdefault(q["video_path"], rank) == rank
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= max(len(g) for g in group_by_video(questions).values())


MC = ROWS[1] | {"options": ["A. tv", "B. lamp", "C. bed"]}
NA = ROWS[0]


def test_official_prompts():
    assert build_prompt(NA, "official") == (
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase."
    )
    assert build_prompt(MC, "official") == (
        "These are frames of a video.\nWhich is closest to the sofa?\nOptions:\nA. tv\nB. lamp\nC. bed\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_spatial_r1_default_prompts():
    assert build_prompt(NA, "default") == (
        "Question:\nHow many chair(s) are in this room?\nPlease answer the question using a single word or phrase."
    )
    assert build_prompt(MC, "default") == (
        "Question:\nWhich is closest to the sofa?\nOptions:\nA. tv\nB. lamp\nC. bed\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_thinking_and_api_prompts():
    assert build_prompt(MC, "thinking") == (
        "Question:\nWhich is closest to the sofa?\nOptions:\nA. tv\nB. lamp\nC. bed\n"
        "First output the thinking process in <think> </think> tags and then output an option letter "
        "in <answer> </answer> tags."
    )
    assert build_prompt(NA, "thinking") == (
        "Question:\nHow many chair(s) are in this room?\nFirst output the thinking process in <think> </think> tags "
        "and then output a number in <answer> </answer> tags."
    )
    for prompt_type in ("gemini_api", "gpt4v"):
        assert build_prompt(NA, prompt_type) == (
            "Question:\nHow many chair(s) are in this room?\nDo not response anything other than a single number!"
        )
        assert build_prompt(MC, prompt_type) == (
            "Question:\nWhich is closest to the sofa?\nOptions:\nA. tv\nB. lamp\nC. bed\n"
            "Answer with the option's letter from the given choices directly."
        )


def test_unknown_prompt_type():
    with pytest.raises(ValueError, match="unknown prompt_type"):
        build_prompt(NA, "verbose")


@pytest.mark.parametrize(
    "prediction, answer",
    [
        ("<think>hmm</think><answer> B </answer>", "B"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("B. lamp", "B. lamp"),
        ("<answer>unclosed", "<answer>unclosed"),
        ("", ""),
    ],
)
def test_extract_answer(prediction, answer):
    assert extract_answer(prediction) == answer
