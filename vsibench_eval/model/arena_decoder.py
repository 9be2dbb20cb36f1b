"""Decode batches that span videos: continuous batching over the arena (arena.py), one copy of each video's
prefix.

Questions are queued by video. A free row is given to the next queued question as soon as its video's prefix is
in the prefix region; newly admitted questions are prefilled packed into their rows, a row is refilled as soon as
its answer ends (the end flags are read every few steps), and a video's prefix is freed when its last question
ends: a decode step carries questions of as many videos as the rows and the prefix region hold. On CUDA the step
over all rows and slots is one captured graph. The arena is sized when first needed and grows (between
questions, when no row is in use) for a longer question or prefix.

A row's arithmetic does not depend on the other rows' contents. In bf16 on a GPU it can depend on where its slots
lie (attention kernels sum the slots block by block), so a resumed run may break a near-tie differently.
"""

from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from math import ceil

import torch

from vsibench_eval.model.arena import Arena, ArenaCache, arena_attention, choose_next
from vsibench_eval.model.decode import GraphedSteps, effective_generation_config, end_token_ids, round_up, until_end
from vsibench_eval.model.generation import VideoPrefix, question_rows, token_text

ROW_STEP = 16  # row lengths are rounded up to this
OWN_SPARE = 1.25  # rows leave this much room over the longest question seen, so a longer one rarely forces a regrow


@dataclass
class Question:
    """A question waiting for a row, or in one."""

    key: object  # the caller's name for it
    video: int  # its video's key in ArenaDecoder.videos
    own_ids: torch.Tensor  # [n] its tokens after the video's prefix
    positions: torch.Tensor  # [3, n] their M-RoPE positions
    next_position: torch.Tensor  # [3] the position of its first answer token
    limit: int  # most new tokens


@dataclass
class Video:
    """A video whose questions are queued or in rows, and where its prefix lies in the prefix region."""

    prefix: VideoPrefix
    length: int  # prefix tokens
    open_questions: int = 0  # added and not yet ended
    start: int | None = None  # its first slot; None until placed


class ArenaDecoder(GraphedSteps):
    """Greedy answers to questions about many videos, decoded together (see the module's doc); one per worker.

    `rows`: the arena's rows; `budget_tokens`: the most cache slots it may hold; `prefix_videos`: how many video
    prefixes its prefix region holds (the worker sizes it so the rows can be kept full); `longest_answer`: the
    largest token limit a question will have. `graphs`: capture the step as a CUDA graph (default: on CUDA).
    `timer`: a StageTimer, or None."""

    def __init__(
        self,
        model,
        processor,
        generation_config,
        rows: int,
        budget_tokens: int,
        prefix_videos: int,
        longest_answer: int,
        graphs: bool | None = None,
        timer=None,
    ):
        effective = effective_generation_config(model, generation_config)
        self.eos = end_token_ids(effective)
        self.penalty = effective.repetition_penalty if effective.repetition_penalty not in (None, 1.0) else None
        self.max_new = effective.max_new_tokens
        self.longest_answer = max(longest_answer, self.max_new)
        self.model, self.processor = model, processor
        self.text_model, self.device = model.model.language_model, model.device
        self.rows, self.budget_tokens, self.prefix_videos = rows, budget_tokens, prefix_videos
        super().__init__(self.device, graphs)
        self.timer = timer
        self.arena: Arena | None = None
        self.videos: dict[int, Video] = {}  # by id(prefix)
        self.queue: deque[Question] = deque()  # waiting for a row, in the order added
        self.in_row: list[Question | None] = []  # the question in each row

    # ------------------------------------------------------------------ what the caller sees

    def add(self, prefix: VideoPrefix, keys: list, texts: list[str], max_new_tokens: int | None = None) -> None:
        """Queue questions (chat texts starting with `prefix.text`) under the caller's `keys`."""
        limit = max_new_tokens or self.max_new
        if limit > self.longest_answer:
            raise ValueError(f"max_new_tokens {limit} is over the arena's longest answer {self.longest_answer}")
        own, rows, grids = question_rows(self.processor, prefix, texts)
        # [3, B, L]: the model's own rule (published or transformers'), from CPU tensors, as generate computes it
        positions, _ = self.model.model.get_rope_index(
            input_ids=rows["input_ids"],
            mm_token_type_ids=rows["mm_token_type_ids"],
            attention_mask=rows["attention_mask"],
            **grids,
        )
        video = self.videos.setdefault(id(prefix), Video(prefix, prefix.inputs["input_ids"].shape[1]))
        video.open_questions += len(texts)
        for row, (key, ids) in enumerate(zip(keys, own, strict=True)):
            n = len(ids)
            own_positions, next_position = positions[:, row, -n:], positions[:, row, -1] + 1
            self.queue.append(Question(key, id(prefix), torch.tensor(ids), own_positions, next_position, limit))

    @property
    def waiting(self) -> int:
        """Questions added and not yet in a row."""
        return len(self.queue)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(question is not None for question in self.in_row)

    def release(self) -> None:
        """Forget every question and free the arena (e.g. after running out of memory)."""
        self._drop_arena()
        self.videos, self.queue, self.in_row = {}, deque(), []

    def _drop_arena(self) -> None:
        self.arena = None
        self.new_graph_pool()

    @torch.inference_mode()
    def fill(self) -> None:
        """Give free rows to queued questions (prefilling them), as far as the rows and the prefix region allow."""
        self._size_arena()
        self._place_prefixes()
        self._admit()

    @torch.inference_mode()
    def advance(self) -> list[tuple[object, str]]:
        """Fill free rows from the queue, run a few decode steps, and return the answers that ended: (key, text)."""
        self.fill()
        ended = self._harvest()  # some end at their first token
        occupied = [r for r, question in enumerate(self.in_row) if question is not None]
        if occupied:
            rows = self._rows_in_step(occupied)
            with self._stage("generation"):
                self.run_steps(self.arena, partial(self._step, rows), self.check_every)
            if self.timer is not None:
                self.timer.count_decode(self.check_every, len(occupied))
            ended += self._harvest()
        elif self.queue:  # an empty arena that takes none of them would wait forever
            raise RuntimeError(f"the arena ({self.arena.slots} slots) cannot take the next question")
        texts = token_text(self.processor, [tokens for _, tokens in ended])
        return [(key, text) for (key, _), text in zip(ended, texts, strict=True)]

    # ------------------------------------------------------------------ sizing and placing

    def _size_arena(self) -> None:
        """Allocate the arena for the queued questions, or a larger one when a queued question or prefix does not
        fit and no row is in use (rows in use finish first)."""
        if not self.queue:
            return
        longest_own = max(len(question.own_ids) for question in self.queue)
        longest_prefix = max(self.videos[question.video].length for question in self.queue)
        arena = self.arena
        if arena is not None:
            fits = longest_own + self.longest_answer <= arena.row_length and longest_prefix <= arena.prefix_slots
            if fits or any(question is not None for question in self.in_row):
                return
        row_length = round_up(ceil(longest_own * OWN_SPARE) + self.longest_answer, ROW_STEP)
        rows = max(1, min(self.rows, (self.budget_tokens - longest_prefix) // row_length))
        prefix_slots = max(
            longest_prefix, min(longest_prefix * self.prefix_videos, self.budget_tokens - rows * row_length)
        )
        width = self.longest_answer + self.check_every + 1  # a row may run on a few steps past its end
        vocab = self.model.lm_head.out_features
        self._drop_arena()
        self.arena = Arena(
            self.text_model, rows, row_length, prefix_slots, width, vocab, self.penalty, self.eos, self.device
        )
        self.in_row = [None] * rows
        for video in self.videos.values():
            video.start = None

    def _place_prefixes(self) -> None:
        """Copy the prefixes of the queued questions' videos into the prefix region, in queue order, while they fit."""
        arena = self.arena
        for key in dict.fromkeys(question.video for question in self.queue):
            video = self.videos[key]
            if video.start is not None:
                continue
            video.start = arena.place(video.length)
            if video.start is None:
                return
            end = video.start + video.length
            for (keys, values), layer in zip(arena.layers, video.prefix.cache.layers, strict=True):
                keys[:, :, video.start : end] = layer.keys  # [1, H, P, D]
                values[:, :, video.start : end] = layer.values

    # ------------------------------------------------------------------ admitting, stepping, harvesting

    def _admit(self) -> None:
        """Give free rows to the queue's first questions whose prefixes are placed, and prefill them packed."""
        free = [r for r, question in enumerate(self.in_row) if question is None]
        admitted = []
        while free and self.queue and self.videos[self.queue[0].video].start is not None:
            question = self.queue.popleft()
            if len(question.own_ids) + question.limit > self.arena.row_length:  # waits for a larger arena
                self.queue.appendleft(question)
                break
            row = free.pop(0)
            self.in_row[row] = question
            admitted.append((row, question))
        if admitted:
            self._prefill(admitted)

    def _prefill(self, admitted: list[tuple[int, Question]]) -> None:
        """The admitted questions' own tokens in one forward [1, T] against their prefixes; each row's state set
        for decoding, and its first answer token chosen."""
        arena, device = self.arena, self.device
        rows = torch.tensor([row for row, _ in admitted], device=device)  # [B]
        lengths = torch.tensor([len(question.own_ids) for _, question in admitted], device=device)  # [B]
        row_of_token = rows.repeat_interleave(lengths)  # [T]
        first_token = (lengths.cumsum(0) - lengths).repeat_interleave(lengths)  # [T] each row's first, packed
        token_slot = arena.row_start[row_of_token] + torch.arange(len(row_of_token), device=device) - first_token
        stretches = set()  # (first, end) of the slots the prefill reads: the questions' prefixes and own tokens
        for row, question in admitted:  # each row sees its video's prefix, and nothing else yet
            video = self.videos[question.video]
            arena.valid[row] = False
            arena.valid[row, video.start : video.start + video.length] = True
            start = int(arena.row_start[row])
            stretches |= {(video.start, video.start + video.length), (start, start + len(question.own_ids))}
        read = torch.cat([torch.arange(first, end) for first, end in sorted(stretches)]).to(device)  # [S']
        own = (read[None] >= arena.row_start[row_of_token][:, None]) & (read[None] <= token_slot[:, None])
        mask = arena.valid[row_of_token][:, read] | own  # [T, S']
        ids = torch.cat([question.own_ids for _, question in admitted]).to(device)  # [T]
        positions = torch.cat([question.positions for _, question in admitted], dim=1).to(device)  # [3, T]
        last = torch.tensor(list(accumulate(len(q.own_ids) for _, q in admitted)), device=device) - 1  # [B]
        with arena_attention(self.text_model.config):
            logits = self.model(
                input_ids=ids[None],
                position_ids=positions[:, None],
                attention_mask=mask[None, None],
                cache=ArenaCache(arena.layers, token_slot, read),
                use_cache=True,
                logits_to_keep=last,
            ).logits[0]  # [B, V]
        arena.valid[row_of_token, token_slot] = True
        arena.positions[:, rows] = torch.stack([question.next_position for _, question in admitted], dim=1).to(device)
        arena.write_slot[rows] = arena.row_start[rows] + lengths
        arena.last_slot[rows] = arena.row_start[rows] + arena.row_length - 1
        arena.limit[rows] = torch.tensor([question.limit for _, question in admitted], device=device)
        arena.count[rows], arena.done[rows] = 0, False
        if arena.seen is not None:  # the repetition penalty counts every prompt token: the prefix's and its own
            arena.seen[rows] = False
            arena.seen[row_of_token, ids] = True
            for row, question in admitted:
                arena.seen[row, self.videos[question.video].prefix.inputs["input_ids"][0].to(device)] = True
        choose_next(arena, logits, rows)

    def _step(self, rows: int) -> None:
        """One new token for each of the first `rows` rows; advances their inputs, with no host synchronization."""
        arena, extent = self.arena, self._extent(rows)
        arena.valid[arena.index[:rows], arena.write_slot[:rows]] = arena.true[:rows]
        with arena_attention(self.text_model.config):
            hidden = self.text_model.forward(  # .forward: no module hooks, so a graph replays exactly this
                input_ids=arena.tokens[None, :rows],  # [1, R]
                position_ids=arena.positions[:, None, :rows],  # [3, 1, R]
                attention_mask=arena.valid[None, None, :rows, :extent],  # [1, 1, R, extent]
                cache=ArenaCache(arena.layers, arena.write_slot[:rows], extent),
                use_cache=True,
            ).last_hidden_state  # [1, R, D]
        choose_next(arena, self.model.lm_head(hidden[0]), arena.index[:rows])
        arena.positions[:, :rows] += 1
        torch.minimum(arena.write_slot[:rows] + 1, arena.last_slot[:rows], out=arena.write_slot[:rows])

    def _harvest(self) -> list[tuple[object, list[int]]]:
        """The (key, tokens) of the rows whose answers ended; their rows freed, and the prefixes of finished videos."""
        occupied = [r for r, question in enumerate(self.in_row) if question is not None]
        if not occupied:
            return []
        arena = self.arena
        done = arena.done[: occupied[-1] + 1].tolist()  # the host waits for the GPU here, every few steps
        ended = [r for r in occupied if done[r]]
        if not ended:
            return []
        tokens, counts = arena.out[ended].cpu(), arena.count[ended].tolist()
        answers = []
        for i, row in enumerate(ended):
            question = self.in_row[row]
            answers.append((question.key, until_end(tokens[i, : min(counts[i], question.limit)], self.eos)))
            self.in_row[row] = None
            self._end_question(question)
        free = torch.tensor(ended, device=self.device)
        arena.valid[free] = False
        arena.valid[free, arena.row_start[free]] = True
        arena.write_slot[free] = arena.last_slot[free] = arena.row_start[free]
        return answers

    def _end_question(self, question: Question) -> None:
        video = self.videos[question.video]
        video.open_questions -= 1
        if video.open_questions == 0:
            del self.videos[question.video]
            if video.start is not None:
                self.arena.release(video.start, video.length)

    def _rows_in_step(self, occupied: list[int]) -> int:
        """Rows a forward computes: all of them for a graph (one shape), else up to the last one in use."""
        return self.arena.rows if self.graphs else max(occupied) + 1

    def _extent(self, rows: int) -> int:
        """Slots a forward over the first `rows` rows attends over: the prefix region and those rows."""
        return self.arena.prefix_slots + rows * self.arena.row_length

    def _stage(self, name: str):
        return self.timer.stage(name) if self.timer is not None else nullcontext()
