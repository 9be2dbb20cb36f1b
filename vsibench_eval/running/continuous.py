"""The worker's loop when the fast decoder answers from shared prefixes: the questions of several videos decode
together in one arena (model/arena_decoder.py). The next video's prefix is prefilled as soon as the arena has
given a row to every question before it, so the rows stay full across video boundaries, and each answer's record
is written as soon as the answer ends. A video whose texts share no video block, or whose frames or prefix
failed, is answered on its own (answering.answer_video). If the arena fails (e.g. out of memory), the questions
it had not answered, and every later video, are answered video by video: nothing is lost and nothing is answered
twice.
"""

from collections import Counter
from functools import partial
from math import ceil
from statistics import median

from vsibench_eval.inputs.questions import group_by_video
from vsibench_eval.model.arena_decoder import ArenaDecoder
from vsibench_eval.model.generation import greedy, shared_prefix_text
from vsibench_eval.run_dir.records import result_record
from vsibench_eval.running.answering import (
    Worker,
    answer_video,
    cognitive_maps,
    log_position_comparison,
    shared_prefix,
)
from vsibench_eval.running.video_prep import model_text, question_prompts, video_texts
from vsibench_eval.settings.config import EvalConfig

MAP = "cognitive map"  # the arena key of a video's generated map (questions are keyed by id)


def make_arena(model, processor, config: EvalConfig, decoding, timer, questions: list[dict]) -> ArenaDecoder:
    """The worker's arena: `batch_size` rows within `batch_tokens` cache slots, and room for the prefixes of as
    many videos as this shard's typical video takes to fill the rows, and one more (the next, being admitted)."""
    per_video = median(len(qs) for qs in group_by_video(questions).values()) if questions else 1
    prefix_videos = ceil(config.batch_size / per_video) + 1
    longest = max(config.max_new_tokens, config.cogmap_max_new_tokens if config.use_cognitive_map else 0)
    generation = greedy(model, processor, config.max_new_tokens, decoding)
    return ArenaDecoder(
        model, processor, generation, config.batch_size, config.batch_tokens, prefix_videos, longest, timer=timer
    )


def answer_videos_together(worker: Worker, videos, groups: dict, done_ids: set, compare_first: bool):
    """Yield lists of records, as answers end, for the unanswered questions of every video `videos` yields
    (DecodedVideo, in order); `groups`: each video's questions. See the module's doc for a failing arena."""
    in_play, written = {}, set()  # path -> DecodedVideo of the videos with questions not yet written; ids written
    videos = iter(videos)
    try:
        for records in arena_records(worker, videos, groups, done_ids, compare_first, in_play):
            written.update(record["id"] for record in records)
            yield records
    except Exception as failure:
        left = sum(q["id"] not in done_ids | written for path in in_play for q in groups[path])
        worker.log.error(
            f"worker {worker.rank}: decoding across videos failed ({type(failure).__name__}: {failure}); its "
            f"{left} unanswered questions, and the videos after them, are answered video by video",
            exc_info=True,
        )
        worker.arena.release()
        for decoded in [*in_play.values(), *videos]:
            yield from answer_video(worker, groups[decoded.path], decoded, done_ids | written, False)


def arena_records(worker: Worker, videos, groups: dict, done_ids: set, compare_first: bool, in_play: dict):
    """answer_videos_together's work while the arena holds; `in_play` is kept up to date for a fallback."""
    arena, config = worker.arena, worker.config
    asked = {}  # id -> (question, prompt, video, cognitive map) of each question given to the arena
    open_questions = Counter()  # path -> questions given to the arena and not yet answered

    def ended() -> tuple[list[dict], str | None]:
        """One arena advance: the records of the answers that ended, and the map's text if it ended."""
        records, map_output = [], None
        for key, text in arena.advance():
            if key == MAP:
                map_output = text
                continue
            question, prompt, video, cogmap = asked.pop(key)
            records.append(result_record(question, prompt, text, video, None, cogmap, config.answer_span))
            path = question["video_path"]
            open_questions[path] -= 1
            if open_questions[path] == 0:
                del in_play[path], open_questions[path]
        return records, map_output

    for decoded in videos:
        path = decoded.path
        questions = [q for q in groups[path] if q["id"] not in done_ids]
        in_play[path] = decoded
        prefix_text = None
        if decoded.error is None:
            prompts, texts, map_text = video_texts(config, worker.template, worker.processor, questions)
            prefix_text = shared_prefix_text([*texts.values(), *([map_text] if map_text else [])])
        if prefix_text is None:  # a failed video (its questions score 0), or texts that share no video block
            yield from answer_video(worker, groups[path], decoded, done_ids, compare_first)
            compare_first = compare_first and decoded.video is None
            del in_play[path]
            continue
        model, fps, timer = worker.model, config.position_fps, worker.timer
        prefix, error = shared_prefix(model, worker.processor, decoded.video, prefix_text, fps, decoded.prefix, timer)
        if error:
            yield from answer_video(worker, groups[path], decoded._replace(error=error), done_ids, False)
            del in_play[path]
            continue
        if compare_first:
            first = questions[0]["id"]
            log_position_comparison(worker, decoded.video, first, texts[first])
            compare_first = False
        map_output = None
        if map_text:  # the video's questions wait for its map; the other videos' answers go on meanwhile
            arena.add(prefix, [MAP], [map_text], config.cogmap_max_new_tokens)
            while map_output is None:
                records, map_output = ended()
                if records:
                    yield records
        cogmaps = cognitive_maps(config, questions, partial(list, [map_output]) if map_text else None)
        if config.use_cognitive_map:  # each question's map goes between the pre-prompt and the question
            prompts = question_prompts(config, worker.template, questions, cogmaps)
            texts = {qid: model_text(worker.processor, prompt, config.system_prompt) for qid, prompt in prompts.items()}
        arena.add(prefix, [q["id"] for q in questions], [texts[q["id"]] for q in questions])
        asked |= {q["id"]: (q, prompts[q["id"]], decoded.video, cogmaps[q["id"]]) for q in questions}
        open_questions[path] += len(questions)
        arena.fill()
        while arena.waiting:  # the next video's prefix is prefilled once every question here has a row
            if records := ended()[0]:
                yield records
    while arena.busy:
        if records := ended()[0]:
            yield records
