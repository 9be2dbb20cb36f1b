"""Bootstrap intervals of VSI-Bench scores, resampling whole videos (the default) or single questions.

VSI-Bench asks about 18 questions of each of its 288 videos, and questions about the same room succeed or fail
together: the video is the unit of independence. Resampling by video draws, within each dataset (arkitscenes,
scannet, scannetpp), as many videos as that dataset has, with replacement, and keeps every question of a drawn
video; a question type's mean is then its questions' mean over the drawn videos (its size varies). Resampling
by question draws questions within each question type (every type keeps its size). Either way a resample is a
vector of weights, how often each unit was drawn, and every score (per task, macro and micro overall, per
dataset) is recomputed from the same weights; a comparison uses the same weights for both runs (paired).

A resample in which a question type drew no question has no value for it: it is left out of the intervals that
depend on that type (with hundreds of questions per type, as in VSI-Bench, this does not happen).

Builds on the official metric's task and macro averages (metric.py) only.
"""

import numpy as np

from vsibench_eval.errors import DataError
from vsibench_eval.metric import macro_mean, task_means

UNITS = ("video", "question")
RESAMPLES = 2000


def video_of(record: dict, number: int) -> str:
    """A record's video, dataset/scene_name; DataError names the record when it lacks either."""
    missing = [key for key in ("dataset", "scene_name") if not record.get(key)]
    if missing:
        which = f"record {number}" + (f" (id {record['id']})" if "id" in record else "")
        raise DataError(
            f"{which}: no {' or '.join(missing)}; intervals by video need both "
            "(or resample questions: --bootstrap_unit question)"
        )
    return f"{record['dataset']}/{record['scene_name']}"


def units_and_strata(records: list[dict], unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Each record's resampling unit (an index) and each unit's stratum: videos within their dataset, or
    questions within their question type."""
    if unit not in UNITS:
        raise ValueError(f"unknown bootstrap unit {unit!r}; choose from {', '.join(UNITS)}")
    if unit == "question":
        of_record, strata = np.arange(len(records)), np.array([record["question_type"] for record in records])
    else:
        index: dict[str, int] = {}
        strata, of_record = [], []
        for number, record in enumerate(records, 1):
            video = video_of(record, number)
            if video not in index:
                index[video] = len(index)
                strata.append(record["dataset"])
            of_record.append(index[video])
        of_record, strata = np.array(of_record, dtype=int), np.array(strata, dtype=str)
    # renumbered so that each stratum's units are adjacent: their weights are filled as one block
    order = np.argsort(strata, kind="stable")
    renumbered = np.empty_like(order)
    renumbered[order] = np.arange(len(order))
    return renumbered[of_record], strata[order]


def resample_weights(strata: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(units, resamples): how many times each unit is drawn in each resample, drawing in each stratum as many
    units as it has. A unit's row is contiguous, so the rows of a few units are gathered fast."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((len(strata), resamples), dtype=np.float32)
    for stratum in sorted(set(strata.tolist())):
        members = np.flatnonzero(strata == stratum)
        draws = rng.integers(0, len(members), size=(resamples, len(members)))
        flat = (draws * resamples + np.arange(resamples)[:, None]).ravel()  # (drawn unit, resample)
        weights[members] = np.bincount(flat, minlength=len(members) * resamples).reshape(len(members), resamples)
    return weights


def weighted_mean(weights: np.ndarray, units: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per resample, the mean in percent of the masked questions' scores, each counted as often as its unit was
    drawn; NaN where none of them was drawn."""
    total = np.bincount(units[mask], weights=scores[mask], minlength=len(weights))
    count = np.bincount(units[mask], minlength=len(weights))
    held = np.flatnonzero(count)  # only the units that hold such questions
    # one product in the weights' float32 (a float64 operand would copy them): counts stay exact below 2^24
    sums = np.stack([total[held], count[held]]).astype(weights.dtype) @ weights[held]
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * sums[0].astype(float) / sums[1]


def resampled_scores(
    question_types: np.ndarray, scores: np.ndarray, units: np.ndarray, weights: np.ndarray, mask: np.ndarray
) -> dict:
    """Per resample, the task scores, the macro overall and the micro mean of the masked questions."""
    type_means = {
        qtype: weighted_mean(weights, units, scores, mask & (question_types == qtype))
        for qtype in sorted(set(question_types[mask].tolist()))
    }
    tasks = task_means(type_means)
    return {"tasks": tasks, "overall": macro_mean(tasks), "micro": weighted_mean(weights, units, scores, mask)}


def interval(values) -> list[float]:
    """The 95 % percentile interval of bootstrap values (resamples without a value left out)."""
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def run_resamples(records: list[dict], runs_scores: list[np.ndarray], unit: str, resamples: int, seed: int) -> list:
    """For each run's per-question scores (aligned with `records`), the resampled scores of all questions and
    of each dataset, every run drawn with the same weights: [{"all": ..., "datasets": {name: ...}}]."""
    units, strata = units_and_strata(records, unit)
    weights = resample_weights(strata, resamples, seed)
    question_types = np.array([record["question_type"] for record in records])
    datasets = np.array([record.get("dataset") or "unknown" for record in records])
    everything = np.ones(len(records), dtype=bool)
    return [
        {
            "all": resampled_scores(question_types, scores, units, weights, everything),
            "datasets": {
                name: resampled_scores(question_types, scores, units, weights, datasets == name)
                for name in sorted(set(datasets.tolist()))
            },
        }
        for scores in runs_scores
    ]


def confidence_intervals(
    records: list[dict], scores: np.ndarray, unit: str = "video", resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """95 % bootstrap intervals in percent of every score of one run: {"overall", "micro", "tasks": {task},
    "datasets": {name: {"overall", "micro"}}}."""
    (resampled,) = run_resamples(records, [np.asarray(scores, dtype=float)], unit, resamples, seed)
    return {
        **intervals_of(resampled["all"]),
        "datasets": {
            name: {"overall": interval(scores["overall"]), "micro": interval(scores["micro"])}
            for name, scores in resampled["datasets"].items()
        },
    }


def intervals_of(resampled: dict) -> dict:
    return {
        "overall": interval(resampled["overall"]),
        "micro": interval(resampled["micro"]),
        "tasks": {task: interval(values) for task, values in resampled["tasks"].items()},
    }


def paired_differences(
    records: list[dict], a_scores, b_scores, unit: str = "video", resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """95 % intervals of B - A (same questions, aligned with `records`), both runs resampled with the same
    weights: {"overall", "micro", "tasks": {task}}."""
    a, b = run_resamples(records, [np.asarray(a_scores, float), np.asarray(b_scores, float)], unit, resamples, seed)
    a, b = a["all"], b["all"]
    return {
        "overall": interval(b["overall"] - a["overall"]),
        "micro": interval(b["micro"] - a["micro"]),
        "tasks": {task: interval(b["tasks"][task] - a["tasks"][task]) for task in a["tasks"]},
    }
