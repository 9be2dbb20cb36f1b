"""Bootstrap intervals that resample whole videos (the default) or questions: on data whose questions succeed or
fail together per video, the video-level interval is wider by the factor worked out by hand."""

import json
import math

import numpy as np
import pytest

from vsibench_eval.errors import DataError
from vsibench_eval.scoring import report
from vsibench_eval.scoring.bootstrap import resample_weights
from vsibench_eval.scoring.report import compare_runs, summarize

DATASETS = ("arkitscenes", "scannet", "scannetpp")
VIDEOS_PER_DATASET = 20
QUESTIONS_PER_VIDEO = 9  # k


def all_or_nothing_run(right_videos=None) -> list[dict]:
    """20 videos in each of 3 datasets, 9 route-planning questions each; in every dataset the even-numbered
    videos have all their questions right, the odd-numbered ones all wrong (p = 0.5 in each dataset)."""
    records = []
    for dataset in DATASETS:
        for video in range(VIDEOS_PER_DATASET):
            right = video % 2 == 0 if right_videos is None else right_videos
            for _ in range(QUESTIONS_PER_VIDEO):
                records.append(
                    {
                        "id": len(records),
                        "dataset": dataset,
                        "scene_name": f"{dataset}_{video:02d}",
                        "question_type": "route_planning",
                        "prediction": "A" if right else "B",
                        "ground_truth": "A",
                        "options": ["A. left", "B. right"],
                        "error": None,
                    }
                )
    return records


def width(bounds: list[float]) -> float:
    return bounds[1] - bounds[0]


# With n videos of k questions and a score that is all or nothing per video, the mean over videos is a
# binomial proportion over n units (standard error sqrt(p(1-p)/n)); resampling the n*k questions as if they were
# independent gives sqrt(p(1-p)/(n*k)). Stratifying by dataset changes neither here (the same p and the same
# number of videos in every dataset, so every resample keeps 180 questions per dataset), so the 95 % intervals'
# widths differ by sqrt(k) = 3. Tolerance 12 %: the video-level percentiles lie on a lattice of 1/60 = 1.67 points
# (one step is 6.6 % of its ~25-point width), the question-level ones on a lattice of 1/540 (2 % of ~8.4 points),
# and 4000 resamples leave each percentile about 0.04 standard errors of Monte Carlo noise (~1.5 % of a width).
EXPECTED_RATIO = math.sqrt(QUESTIONS_PER_VIDEO)
TOLERANCE = 0.12
RESAMPLES = 4000


def test_video_intervals_are_wider_by_the_square_root_of_the_questions_per_video():
    records = all_or_nothing_run()
    by_video = summarize(records, resamples=RESAMPLES, unit="video")
    by_question = summarize(records, resamples=RESAMPLES, unit="question")
    assert by_video["overall"] == by_question["overall"] == 50.0  # the point estimate does not depend on the unit
    n = len(DATASETS) * VIDEOS_PER_DATASET
    standard_error = 100 * math.sqrt(0.25 / n)  # the video-level one, 6.45 points
    assert width(by_video["ci"]["overall"]) == pytest.approx(2 * 1.96 * standard_error, rel=TOLERANCE)
    for key in ("overall", "micro"):
        ratio = width(by_video["ci"][key]) / width(by_question["ci"][key])
        assert ratio == pytest.approx(EXPECTED_RATIO, rel=TOLERANCE), key
    ratio = width(by_video["ci"]["tasks"]["route_planning"]) / width(by_question["ci"]["tasks"]["route_planning"])
    assert ratio == pytest.approx(EXPECTED_RATIO, rel=TOLERANCE)
    # Per dataset, 20 videos: Binomial(20, 0.5) / 20 has a 5-point lattice and its 2.5 % point sits near a step
    # (P(X <= 5) = 2.1 %), so the video-level width is 40 or 45 points where the normal approximation gives
    # 3.92 * 11.2 = 43.8, a ratio of 2.74 to 3.08 against the question-level ~14.6 points: 20 % around sqrt(k).
    for dataset in DATASETS:
        video, question = by_video["ci"]["datasets"][dataset], by_question["ci"]["datasets"][dataset]
        assert width(video["overall"]) / width(question["overall"]) == pytest.approx(EXPECTED_RATIO, rel=0.2)
    assert by_video["bootstrap"] == {"resamples": RESAMPLES, "seed": 0, "unit": "video"}
    assert by_question["bootstrap"]["unit"] == "question"
    assert "bootstrap of whole videos within each dataset" in report.format_table(by_video)


def test_paired_comparison_resamples_the_same_videos_in_both_runs():
    a, b = all_or_nothing_run(right_videos=False), all_or_nothing_run()  # B - A is B's score, video by video
    by_video = compare_runs(a, b, resamples=RESAMPLES, unit="video")
    by_question = compare_runs(a, b, resamples=RESAMPLES, unit="question")
    assert by_video["overall"]["diff"] == 50.0
    ratio = width(by_video["overall"]["ci"]) / width(by_question["overall"]["ci"])
    assert ratio == pytest.approx(EXPECTED_RATIO, rel=TOLERANCE)
    assert width(by_video["micro"]["ci"]) / width(by_question["micro"]["ci"]) == pytest.approx(
        EXPECTED_RATIO, rel=TOLERANCE
    )
    assert "paired bootstrap of whole videos" in report.format_comparison(by_video, "A", "B")


def test_weights_draw_each_stratum_its_own_size():
    strata = np.array(["x"] * 3 + ["y"] * 5)
    weights = resample_weights(strata, resamples=50, seed=1)
    assert weights.shape == (8, 50)  # a row per unit, a column per resample
    assert (weights[:3].sum(axis=0) == 3).all() and (weights[3:].sum(axis=0) == 5).all()
    assert weights[:3].sum() == 150 and len(np.unique(weights[:3], axis=1)) > 1  # not the same draw every time
    assert (resample_weights(strata, 50, 1) == weights).all() and not (resample_weights(strata, 50, 2) == weights).all()


def test_a_record_without_its_video_is_named(tmp_path, capsys):
    records = all_or_nothing_run()[:3]
    del records[1]["scene_name"]
    with pytest.raises(DataError, match=r"record 2 \(id 1\): no scene_name; .*--bootstrap_unit question"):
        summarize(records)
    assert summarize(records, unit="question")["bootstrap"]["unit"] == "question"
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert report.main([str(path)]) == 2
    assert f"{path}: record 2 (id 1): no scene_name" in capsys.readouterr().err


def test_a_run_without_records_gets_empty_intervals_not_an_error():
    # a run whose every worker died before its first batch still writes its summary
    intervals = summarize([], "official")["ci"]
    assert intervals["tasks"] == {} and intervals["overall"] == [0.0, 0.0]
