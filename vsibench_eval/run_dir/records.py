"""The results' record: one JSON line per question, with what was sent, what came back, its scores and the
provenance of its frames and cognitive map. Workers append these to their shards; the merge checks and scores
them."""

from vsibench_eval.inputs.frames import VideoFrames
from vsibench_eval.metric import extract_answer
from vsibench_eval.scoring import report


def result_record(
    question: dict,
    prompt: str,
    prediction: str,
    video: VideoFrames | None,
    error: str | None,
    cogmap: tuple,
    answer_span: str = "last",
) -> dict:
    """One line of the results: the question, what was sent, what came back, its score and provenance."""
    record = {key: question[key] for key in ("id", "dataset", "scene_name", "question_type", "question")}
    record |= {
        "options": question["options"],
        "ground_truth": question["ground_truth"],
        "prompt": prompt,
        "prediction": prediction,
        "answer": extract_answer(prediction, answer_span),
        "answer_span": answer_span,  # which <answer> span the official score reads (none, first or last)
        "frame_indices": video.frame_indices if video else None,
        "frame_timestamps": video.timestamps if video else None,
        "video_duration": video.duration if video else None,
        "frame_size": video.frame_size() if video else None,  # [H, W] in pixels, as given to the processor
        "video_grid_thw": video.grid_thw if video else None,  # [t, h, w] in patches
        "cogmap_source": cogmap[1],  # generated, offloaded or none
        "cognitive_map": cogmap[0],
        "error": error,
    }
    record["score"] = report.score_record(record, "official")  # the official rules
    record["score_lenient"] = report.score_record(record, "lenient")
    return record
