"""Spatial-R1 / Video-R1 data files, subsets, prompt templates and cognitive maps."""

import json

import pandas as pd
import pytest

from vsibench_eval.errors import DataError
from vsibench_eval.inputs.cogmap import load_offloaded_maps, offloaded_map, parse_cognitive_map
from vsibench_eval.inputs.prompts import build_prompt, cogmap_block, load_prompt_template
from vsibench_eval.inputs.questions import load_questions, select_question_types, select_subset

SR_ROWS = [
    {
        "problem_id": 1,
        "problem": "Question:\nHow many monitor(s) are in this room?",
        "data_type": "video",
        "problem_type": ["object_counting"],
        "solution": "<answer>7</answer>",
        "video_filename": "scannet/scene0653_00.mp4",
    },
    {
        "problem_id": 2,
        "problem": "Question:\nWhich is closer to the door?\nOptions:\nA. bed\nB. desk",
        "data_type": "video",
        "problem_type": ["object_rel_distance"],
        "solution": "<answer>B</answer>",
        "video_filename": "arkitscenes/41069025.mp4",
    },
]
VIDEO_R1_ROWS = [
    {
        "problem_id": 10,
        "problem": "What does the person pick up?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. a cup", "B. a book"],
        "solution": "<answer>A</answer>",
        "path": "./LLaVA-Video/clips/v_001.mp4",
    },
    {
        "problem_id": 11,
        "problem": "How many people enter?",
        "data_type": "video",
        "problem_type": "numerical",
        "solution": "<answer>3</answer>",
        "path": "./LLaVA-Video/clips/v_001.mp4",
    },
]


def test_spatial_r1_jsonl_loads_into_question_records(tmp_path):
    path = tmp_path / "sr.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SR_ROWS))
    counting, distance = load_questions(str(path), "/videos")
    assert counting == {
        "id": 1,
        "dataset": "scannet",
        "scene_name": "scene0653_00",
        "question_type": "object_counting",
        "question": "How many monitor(s) are in this room?",  # the format's "Question:\n" is the prompt's job
        "options": None,
        "ground_truth": "7",
        "video_path": "/videos/scannet/scene0653_00.mp4",
    }
    assert distance["options"] == ["A. bed", "B. desk"] and distance["question"] == "Which is closer to the door?"
    assert distance["ground_truth"] == "B"
    assert build_prompt(counting, "default").startswith("Question:\nHow many monitor(s)")


def test_video_r1_json_loads_with_generic_kinds(tmp_path):
    path = tmp_path / "vr1.json"
    path.write_text(json.dumps(VIDEO_R1_ROWS))
    choice, number = load_questions(str(path), "/videos")
    assert choice["question_type"] == "multiple choice" and choice["options"] == ["A. a cup", "B. a book"]
    assert choice["video_path"] == "/videos/LLaVA-Video/clips/v_001.mp4" and choice["dataset"] == "LLaVA-Video"
    assert number["question_type"] == "numerical" and number["ground_truth"] == "3" and number["options"] is None


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"solution": "7"}, "row id 1: column 'solution': no <answer>"),
        ({"problem_type": ["ocr"]}, "row id 1: column 'question_type': unknown question type 'ocr'"),
        ({"data_type": "image"}, "row id 1: column 'data_type'"),
        ({"video_filename": None}, "row id 1: column 'video_filename'"),
    ],
)
def test_bad_sr_rows_name_the_row_and_column(tmp_path, change, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(SR_ROWS[0] | change) + "\n")
    with pytest.raises(DataError, match=needle):
        load_questions(str(path), "/videos")


def vsi_questions(n=6):
    return [
        {"id": i, "question_type": "object_counting" if i % 2 else "route_planning", "pruned": i < 2} for i in range(n)
    ]


def test_subsets_by_pruned_column_and_by_id_file(tmp_path):
    questions = vsi_questions()
    assert [q["id"] for q in select_subset(questions, "debiased", None, "t.parquet")] == [2, 3, 4, 5]
    assert [q["id"] for q in select_subset(questions, "pruned", None, "t.parquet")] == [0, 1]
    assert select_subset(questions, "full", None, "t.parquet") == questions
    ids_txt = tmp_path / "ids.txt"
    ids_txt.write_text("5\n1\n")
    assert [q["id"] for q in select_subset(questions, "debiased", str(ids_txt), "t.parquet")] == [1, 5]
    ids_json = tmp_path / "ids.json"
    ids_json.write_text(json.dumps([{"id": 3}, {"id": 4}]))
    assert [q["id"] for q in select_subset(questions, "full", str(ids_json), "t.parquet")] == [3, 4]
    ids_json.write_text(json.dumps([3, 99]))
    with pytest.raises(DataError, match="1 id\\(s\\) not in t.parquet"):
        select_subset(questions, "full", str(ids_json), "t.parquet")
    with pytest.raises(DataError, match="no 'pruned' column"):
        select_subset([{"id": 1}], "debiased", None, "t.parquet")


def test_question_type_filter():
    questions = vsi_questions()
    assert [q["id"] for q in select_question_types(questions, ["object_counting"])] == [1, 3, 5]
    assert select_question_types(questions, []) == questions
    with pytest.raises(DataError, match="unknown type"):
        select_question_types(questions, ["object_colour"])


MC = {"question_type": "route_planning", "question": "Which way?", "options": ["A. left", "B. right"]}
NA = {"question_type": "object_counting", "question": "How many?", "options": None}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_user_prompt_templates(tmp_path, suffix):
    template = {"pre_prompt": "Look closely.\n", "mca_post_prompt": "Letter only.", "na_post_prompt": "Number only."}
    path = tmp_path / f"t{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(template))
    else:
        path.write_text('pre_prompt: "Look closely.\\n"\nmca_post_prompt: Letter only.\nna_post_prompt: Number only.\n')
    loaded = load_prompt_template(str(path))
    assert loaded == template
    assert (
        build_prompt(MC, "custom", loaded)
        == "Look closely.\nQuestion:\nWhich way?\nOptions:\nA. left\nB. right\nLetter only."
    )
    assert build_prompt(NA, "custom", loaded) == "Look closely.\nQuestion:\nHow many?\nNumber only."


def test_bad_prompt_template(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"pre_prompt": ""}))
    with pytest.raises(DataError, match="missing or non-text key\\(s\\) mca_post_prompt, na_post_prompt"):
        load_prompt_template(str(path))


def test_cognitive_map_goes_before_the_question():
    cogmap = '{"chair": [[2, 3]]}'
    intro = "Here is a cognitive_map for the video that may help you understand the space in the video:"
    block = cogmap_block(cogmap, "generated")
    assert build_prompt(NA, "default", cogmap_block=block) == (
        f"{intro}\nCognitive Map:\n{cogmap}\nQuestion:\nHow many?\n"
        "Please answer the question using a single word or phrase."
    )
    assert cogmap_block(None, "none") == ""  # no map, nothing added
    assert build_prompt(NA, "official", cogmap_block=block).startswith(
        f"These are frames of a video.\n{intro}\nCognitive Map:\n{cogmap}\nHow many?"
    )


@pytest.mark.parametrize(
    "output, expected",
    [
        ('{"chair": [[2, 3], [4, 5]], "table": [[6, 6]]}', {"chair": [[2, 3], [4, 5]], "table": [[6, 6]]}),
        ('```json\n{"sofa": [(1, 2)], "tv": [(9, 9)],}\n```', {"sofa": [[1, 2]], "tv": [[9, 9]]}),
        ("Sure! Here is the map: {'bed': [3, 4]} Hope it helps.", {"bed": [[3, 4]]}),
        ('{"lamp": [[2.5, 3]], "note": "none"}', {"lamp": [[2.5, 3]]}),
        ("I cannot see any objects.", None),
        ('{"chair": "somewhere"}', None),
        # cut off by the token limit: the complete entries are kept
        ('{"chair": [[2, 3], [4, 5]], "table": [[6, 6]], "lamp": [[1,', {"chair": [[2, 3], [4, 5]], "table": [[6, 6]]}),
        ("{chair: [[2, 3]], tv: [[9, 9]]}", {"chair": [[2, 3]], "tv": [[9, 9]]}),  # unquoted keys
        ("{'children's toy': [[2, 3]], 'bed': [[5, 5]]}", {"children's toy": [[2, 3]], "bed": [[5, 5]]}),
        ('{"children\'s toy": [(2, 3)]}', {"children's toy": [[2, 3]]}),
        ('Map: {"note": "none"} and then {"sofa": [[1, 1]]}', {"sofa": [[1, 1]]}),  # the first usable object
    ],
)
def test_parse_cognitive_map_tolerantly(output, expected):
    assert parse_cognitive_map(output) == expected


def test_offloaded_maps_match_ids_and_scene_names_as_text(tmp_path):
    path = tmp_path / "maps.csv"
    pd.DataFrame({"id": [12, 13], "cognitive_map": ['{"chair": [[1, 1]]}', None]}).to_csv(path, index=False)
    maps = load_offloaded_maps(str(path), "id", "cognitive_map")
    assert offloaded_map(maps, {"id": 12, "scene_name": "s"}) == '{"chair": [[1, 1]]}'
    assert offloaded_map(maps, {"id": 13, "scene_name": "s"}) is None  # an empty map cell is no map
    by_scene = tmp_path / "maps.jsonl"
    by_scene.write_text(json.dumps({"scene": "scene0011_00", "map": {"bed": [[2, 2]]}}) + "\n")
    maps = load_offloaded_maps(str(by_scene), "scene", "map")
    assert offloaded_map(maps, {"id": 5, "scene_name": "scene0011_00"}) == '{"bed": [[2, 2]]}'
    with pytest.raises(DataError, match="row 1: column 'cog'"):
        load_offloaded_maps(str(by_scene), "scene", "cog")
    pickled = tmp_path / "maps.pkl"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(DataError, match="unsupported file type '.pkl'"):
        load_offloaded_maps(str(pickled), "id", "cognitive_map")


def test_offloaded_maps_match_float_and_string_ids_and_skip_blank_rows(tmp_path):
    # a blank row makes pandas read the whole id column as floats: 12.0, 13.0, NaN
    csv = tmp_path / "maps.csv"
    csv.write_text('id,cognitive_map\n12,"{""chair"": [[1, 1]]}"\n,\n13,"{""bed"": [[2, 2]]}"\n')
    maps = load_offloaded_maps(str(csv), "id", "cognitive_map")
    assert maps == {"12": '{"chair": [[1, 1]]}', "13": '{"bed": [[2, 2]]}'}
    assert offloaded_map(maps, {"id": 12, "scene_name": "s"}) == '{"chair": [[1, 1]]}'
    assert offloaded_map(maps, {"id": 13, "scene_name": "s"}) == '{"bed": [[2, 2]]}'
    assert offloaded_map(maps, {"id": 14, "scene_name": "s"}) is None
    # ids written as text, and as floats in JSON
    jsonl = tmp_path / "maps.jsonl"
    rows = [{"qid": "12", "map": "A"}, {"qid": 13.0, "map": "B"}, {"qid": 14.5, "map": "C"}]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    maps = load_offloaded_maps(str(jsonl), "qid", "map")
    assert [offloaded_map(maps, {"id": i, "scene_name": "s"}) for i in (12, 13, 14)] == ["A", "B", None]


def test_generic_video_r1_types_are_scored_as_tasks_of_their_own():
    from vsibench_eval.scoring.report import aggregate, format_table

    records = [
        {"question_type": "multiple choice", "prediction": "A", "ground_truth": "A", "options": ["A. x", "B. y"]},
        {"question_type": "multiple choice", "prediction": "B", "ground_truth": "A", "options": ["A. x", "B. y"]},
        {"question_type": "numerical", "prediction": "3.3", "ground_truth": "3", "options": None},
    ]
    result = aggregate(records)
    assert result["tasks"] == {"multiple choice": 50.0, "numerical": pytest.approx(90.0)}
    assert result["overall"] == pytest.approx(70.0)
    table = format_table(result)
    assert "multiple choice" in table and "obj_appearance_order" not in table
