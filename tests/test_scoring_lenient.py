"""The lenient parser on answers written the way real models write them; the official parser stays the default."""

import pytest

from vsibench_eval.scoring.lenient import answer_text, parse_choice, parse_number
from vsibench_eval.scoring.report import score_record

OPTIONS = ["A. Back", "B. Right", "C. Left"]


def mc(prediction, ground_truth="B", error=None):
    return {
        "question_type": "object_rel_direction_medium",
        "prediction": prediction,
        "ground_truth": ground_truth,
        "options": OPTIONS,
        "error": error,
    }


def na(prediction, ground_truth="3", error=None):
    return {
        "question_type": "object_counting",
        "prediction": prediction,
        "ground_truth": ground_truth,
        "options": None,
        "error": error,
    }


@pytest.mark.parametrize(
    "prediction, letter",
    [
        ("B", "B"),
        ("b", "B"),
        ("B.", "B"),
        ("The answer is B.", "B"),
        ("B) Right", "B"),
        ("B. Right", "B"),
        ("(B)", "B"),
        ("Answer: B", "B"),
        ("**B**", "B"),
        ("**Answer:** B", "B"),
        ("The correct option is (B).", "B"),
        ("The answer is option B: Right", "B"),
        ("<think>The sofa is on my right when I face the TV.</think><answer>B</answer>", "B"),
        ("<think>The sofa is on my right when I face the TV.</think>\n<answer>B", "B"),  # cut off, no closing tag
        ("<think>On my right.</think>\nB", "B"),
        ("Based on the video, the sofa is to the left. So the answer is A.", "A"),  # not the article "A"
        ("Left", "C"),  # the full text of an option
        ("left.", "C"),
        ("The answer is Left.", "C"),
        ("I think the sofa is behind me, so A.", "A"),  # the last word
        ("A or maybe B... final answer: B", "B"),  # two answers: the final one
        ("I think (A)... no, (C)", "C"),
        ("The answer is B. (A) is wrong because the sofa is in front of me.", "B"),  # a statement beats a label
        ("A sofa and a lamp are on the left.", None),  # an article, no answer
        ("I cannot tell from the video.", None),  # the pronoun, no answer
        ("The answer is D.", None),  # not one of the options
        ("", None),
        (None, None),
    ],
)
def test_choice_as_models_write_it(prediction, letter):
    assert parse_choice(answer_text(prediction), OPTIONS) == letter


@pytest.mark.parametrize(
    "prediction, number",
    [
        ("3", 3.0),
        ("3.5 m", 3.5),
        ("3m", 3.0),
        ("1,200", 1200.0),
        ("It is about 1,200 cm, roughly.", 1200.0),
        ("three", 3.0),
        ("Three.", 3.0),
        ("twenty-one", 21.0),
        ("twenty one", 21.0),
        ("a hundred", 100.0),
        ("one hundred and five", 105.0),
        ("about 4 meters", 4.0),
        ("I count 2 chairs... actually 3", 3.0),  # two answers: the final one
        ("There are two chairs by the table and one more by the door, so three in total.", 3.0),
        ("The room is about 20 m^2.", 20.0),  # the power is not a number stated
        ("<think>2 chairs, maybe 4</think><answer>3</answer>", 3.0),
        ("<think>2 chairs, maybe 4</think><answer>3 chairs", 3.0),
        ("one thousand two hundred", 1200.0),
        ("It is two point five meters away.", 2.5),
        ("two", 2.0),  # small counts stand alone in words too
        ("Three hundred and twenty-one centimeters", 321.0),
        ("The first chair is 3 m from the door.", 3.0),  # an ordinal is not a number stated
        ("It is the 2nd chair from the left, about 1.5 m wide.", 1.5),
        ("I cannot see any chairs clearly.", None),
        ("", None),
    ],
)
def test_number_as_models_write_it(prediction, number):
    assert parse_number(answer_text(prediction)) == number


def test_choice_without_options_accepts_any_capital_letter():
    assert parse_choice("The answer is D.", None) == "D"
    assert parse_choice("A sofa.", None) is None


@pytest.mark.parametrize(
    "record, official, lenient",
    [
        (mc("B"), 1.0, 1.0),
        (mc("B. Right"), 1.0, 1.0),
        (mc("The answer is B."), 0.0, 1.0),
        (mc("(B)"), 0.0, 1.0),
        (mc("Right"), 0.0, 1.0),
        (mc("<think>right side</think><answer>B"), 0.0, 1.0),
        (mc("The answer is A."), 0.0, 0.0),
        (mc("I cannot tell."), 0.0, 0.0),  # no answer stated: 0
        (mc("B", error="video missing"), 0.0, 0.0),  # a failed question: 0 under either parser
        (na("3"), 1.0, 1.0),
        (na("3 meters"), 1.0, 1.0),
        (na("3m"), 0.0, 1.0),
        (na("three"), 0.0, 1.0),
        (na("about 4 meters"), 0.0, 0.4),
        (na("1,200", ground_truth="1200"), 0.0, 1.0),
        (na("one thousand two hundred", ground_truth="1200"), 0.0, 1.0),
        (na("two point five meters", ground_truth="2.5"), 0.0, 1.0),
        (na("no chairs visible"), 0.0, 0.0),
        (na("3", error="video missing"), 0.0, 0.0),
    ],
)
def test_record_scores_under_both_parsers(record, official, lenient):
    assert score_record(record) == pytest.approx(official)  # the default is still the official rule
    assert score_record(record, parser="official") == pytest.approx(official)
    assert score_record(record, parser="lenient") == pytest.approx(lenient)


def test_rescoring_ignores_a_stored_score():
    record = mc("The answer is B.") | {"score": 1.0, "score_lenient": 0.0}
    assert score_record(record) == 0.0 and score_record(record, parser="lenient") == 1.0


def test_unknown_parser_is_refused():
    with pytest.raises(ValueError, match="unknown parser"):
        score_record(mc("B"), parser="generous")
