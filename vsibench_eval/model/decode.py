"""Fast greedy decoding: a static KV cache, a self-advancing decode step, CUDA graphs on GPU.

This module is the plain path's decoder (every question's whole prompt, video included, prefilled) and what the
shared-prefix path's arena decoder (arena_decoder.py, where the questions of several videos decode together)
builds on: the checks of what the fast decoders support, and the graph handling.

transformers' `generate` pays for every new token: Python set-up, a DynamicCache concatenated anew, a mask
rebuilt from scratch and one kernel launch per operation (25-30 ms per step for a 7B model, where the GPU
needs 5-6 ms); rows that finished ride along until the longest ends. Here:

- a batch's rows live in preallocated cache buffers [rows, kv_heads, length, head_dim] (one arena per layer,
  reused by every batch), laid out as the HF path lays them: [left padding | prompt | new];
- one decode step is a fixed sequence of operations on fixed tensors that advances its own inputs (the token
  fed next, its M-RoPE position, its cache slot), so on CUDA it is captured once per shape and replayed as a
  CUDA graph;
- the finished flags are read every few steps (each read waits for the GPU), and rows that finished are
  dropped once they are at least half of the batch, so a batch of long answers costs what its tokens cost.

The step calls the model's own text layers (transformers' attention, rotary and norm code), so the
arithmetic is the HF path's: answers are token-identical to it in float32 on CPU (the tests check every
supported family). In bf16 on a GPU the kernels see other shapes (a longer, masked cache; fewer rows after a
drop), which can change a near-tie between two tokens.
"""

from collections import OrderedDict
from contextlib import nullcontext
from functools import partial

import torch

# The families whose fast path the tests prove token-identical to HF's. Others (linear-attention or
# sliding-window layers, whose caches hold other state) are answered by HF's generate.
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

CHECK_EVERY_ON_GPU = 8  # decode steps between reads of the finished flags on a GPU
LENGTH_STEP_WITH_GRAPHS = 256  # cache lengths rounded up to this, so a few graph shapes serve all videos
WARMUP_STEPS = 2  # eager steps run before a graph capture (their writes land in slots the margin covers)
MAX_GRAPHS = 16  # captured graphs kept (least recently used dropped)

# Generation settings the fast loop does not implement, with the test that says they are on; any of them
# sends the batch to HF's generate. Greedy decoding with an optional repetition penalty is implemented.
UNSUPPORTED_SETTINGS = (
    ("do_sample", lambda v: bool(v)),
    ("num_beams", lambda v: v is not None and v > 1),
    ("num_return_sequences", lambda v: v is not None and v > 1),
    ("guidance_scale", lambda v: v is not None and v != 1),
    ("sequence_bias", lambda v: v is not None),
    ("no_repeat_ngram_size", lambda v: bool(v)),
    ("bad_words_ids", lambda v: v is not None),
    ("min_length", lambda v: bool(v)),
    ("min_new_tokens", lambda v: bool(v)),
    ("forced_bos_token_id", lambda v: v is not None),
    ("forced_eos_token_id", lambda v: v is not None),
    ("remove_invalid_values", lambda v: bool(v)),
    ("exponential_decay_length_penalty", lambda v: v is not None),
    ("suppress_tokens", lambda v: v is not None),
    ("begin_suppress_tokens", lambda v: v is not None),
    ("renormalize_logits", lambda v: bool(v)),
    ("watermarking_config", lambda v: v is not None),
    ("stop_strings", lambda v: v is not None),
    ("max_time", lambda v: v is not None),
)


def effective_generation_config(model, generation_config):
    """The settings HF's generate really uses: the given ones, completed by the checkpoint's
    generation_config.json (e.g. its repetition_penalty) and transformers' defaults."""
    return model._prepare_generation_config(generation_config)[0]


def unsupported_reason(model, generation_config) -> str | None:
    """Why the fast decoder cannot answer for this model and these settings, or None when it can."""
    model_type = model.config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    text_config = model.config.get_text_config()
    layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"its text layers are {', '.join(sorted(layer_types))}, not all full attention"
    attention = text_config._attn_implementation
    if attention not in ("sdpa", "eager"):
        return f"attention {attention!r}: the fast decoder passes explicit masks, which need sdpa or eager"
    effective = effective_generation_config(model, generation_config)
    for name, is_on in UNSUPPORTED_SETTINGS:
        value = getattr(effective, name, None)
        if is_on(value):
            return f"generation setting {name}={value!r} is not implemented by the fast decoder"
    if not effective.max_new_tokens:
        return "generation needs max_new_tokens"
    return None


def end_token_ids(effective) -> tuple[int, ...]:
    eos = effective.eos_token_id
    return tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def graph_rows(rows: int) -> int:
    """Rows of a graph shape: 1, 2, 4, 8, then multiples of 8 (dummy rows fill the gap)."""
    return 1 << (rows - 1).bit_length() if rows <= 8 else round_up(rows, 8)


class StaticKVCache:
    """What the model's attention layers write to (duck-typed for transformers' `cache.update`): per layer,
    keys and values [rows, kv_heads, length, head_dim]. With `prefill_at` set, a forward writes its tokens at
    slots [prefill_at, prefill_at + n) of the first rows; otherwise row r's one new token goes to write_index[r]."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, write_index: torch.Tensor):
        self.layers = layers
        self.rows = rows  # arange(rows) [R]
        self.write_index = write_index  # [R]
        self.prefill_at: int | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.layers[layer_idx]
        if self.prefill_at is not None:  # key_states [B, H, n, D], B <= rows
            rows, end = key_states.shape[0], self.prefill_at + key_states.shape[2]
            keys[:rows, :, self.prefill_at : end] = key_states
            values[:rows, :, self.prefill_at : end] = value_states
            return keys[:rows], values[:rows]
        keys[self.rows, :, self.write_index] = key_states[:, :, 0]  # [R, H, D]
        values[self.rows, :, self.write_index] = value_states[:, :, 0]
        return keys, values


class DecodeSlot:
    """Everything a decode step of one shape reads and writes, at fixed addresses (a CUDA graph replays on them)."""

    def __init__(self, cache_layers, rows: int, length: int, max_new: int, vocab: int, penalty, eos, device):
        long = {"dtype": torch.long, "device": device}
        self.rows = torch.arange(rows, device=device)  # [R]
        self.tokens = torch.zeros(rows, 1, **long)  # the token each row feeds next
        self.positions = torch.zeros(3, rows, 1, **long)  # its M-RoPE position (temporal, height, width)
        self.write_index = torch.zeros(rows, **long)  # its cache slot
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=device)  # the slots each row attends to
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device) if penalty else None  # penalized ids
        self.out = torch.zeros(rows, max_new + WARMUP_STEPS, **long)  # the tokens generated so far
        self.count = torch.zeros(1, **long)  # how many (the same for every row)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)  # has generated an end token
        self.true = torch.ones(rows, dtype=torch.bool, device=device)  # written by index (no host scalar in a graph)
        self.eos = torch.tensor(eos or (-1,), **long)  # -1 never matches
        self.penalty = penalty
        self.cache = StaticKVCache(cache_layers, self.rows, self.write_index)
        self.graph = None

    def state(self) -> list[torch.Tensor]:
        tensors = [self.tokens, self.positions, self.write_index, self.valid, self.out, self.count, self.done]
        return tensors + ([self.seen] if self.seen is not None else [])


class GraphedSteps:
    """What the two fast decoders (FastDecoder here, arena_decoder.ArenaDecoder) share: decode steps run eagerly,
    or, with graphs on (the default on CUDA), captured once per state holder as a CUDA graph and replayed; a
    capture that fails turns graphs off for good and keeps the reason."""

    def __init__(self, device: torch.device, graphs: bool | None):
        self.graphs = device.type == "cuda" if graphs is None else graphs
        self.check_every = CHECK_EVERY_ON_GPU if self.graphs else 1
        self.graph_pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self.graph_failure: str | None = None  # why graphs were turned off, if capturing failed

    def new_graph_pool(self) -> None:
        """A fresh pool once the old one's graphs are dropped (capturing into it again trips an allocator assert)."""
        if self.graphs:
            self.graph_pool = torch.cuda.graph_pool_handle()

    def run_steps(self, holder, step, steps: int) -> None:
        """`steps` calls of `step()`: replays of `holder.graph`, captured over `holder.state()` on first use, when
        graphs are on; else eager calls."""
        if self.graphs and holder.graph is None:
            try:
                holder.graph = capture_step(step, holder.state(), self.graph_pool)
            except Exception as failure:  # keep answering, eagerly, and say why
                self.graphs, self.graph_failure = False, f"{type(failure).__name__}: {failure}"
                torch.cuda.synchronize()
        for _ in range(steps):
            if self.graphs:
                holder.graph.replay()
            else:
                step()


class FastDecoder(GraphedSteps):
    """Greedy answers of a Qwen-VL model from a static KV cache; one per worker (it keeps its cache arena and
    graphs between batches). `graphs`: capture the step as CUDA graphs (default: on CUDA). `timer`: an object
    with a `stage(name)` context manager, or None."""

    def __init__(self, model, graphs: bool | None = None, timer=None):
        self.model, self.text_model, self.device = model, model.model.language_model, model.device
        super().__init__(self.device, graphs)
        self.length_step = LENGTH_STEP_WITH_GRAPHS if self.graphs else 1
        attention = self.text_model.layers[0].self_attn
        self.kv_heads, self.head_dim = attention.k_proj.out_features // attention.head_dim, attention.head_dim
        self.dtype = attention.k_proj.weight.dtype
        self.arena: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, flat keys and values
        self.arena_tokens = 0  # rows x length the arena holds
        self.slots: OrderedDict[tuple, DecodeSlot] = OrderedDict()
        self.step = self._step  # what a decode step runs (a torch.compile'd step may replace it: tests do)
        self.timer = timer

    # ------------------------------------------------------------------ the step

    def _step(self, slot: DecodeSlot) -> None:
        """Feed each row's token, choose the next one, and advance the slot's inputs; no host synchronization."""
        slot.valid.index_put_((slot.rows, slot.write_index), slot.true)
        hidden = self.text_model.forward(  # .forward: no module hooks, so a graph replays exactly this
            input_ids=slot.tokens,
            position_ids=slot.positions,
            attention_mask=slot.valid[:, None, None, :],  # [R, 1, 1, L]
            cache=slot.cache,
            use_cache=True,
        ).last_hidden_state  # [R, 1, D]
        choose_next(slot, self.model.lm_head(hidden[:, -1]))
        slot.positions.add_(1)
        slot.write_index.add_(1)

    # ------------------------------------------------------------------ cache and slots

    def _cache_layers(self, rows: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views [rows, kv_heads, length, head_dim] of every layer's arena; all shapes start at the same address,
        so a row of (rows, length) is the same memory as that row of (fewer rows, length)."""
        need = rows * length
        if need > self.arena_tokens:
            self.release()
            capacity = need
            size = capacity * self.kv_heads * self.head_dim
            new = {"dtype": self.dtype, "device": self.device}
            # Zeros, not empty: a masked slot's value still meets a zero weight (0 x NaN = NaN), so every slot must
            # hold a finite number; later batches leave finite keys and values behind.
            self.arena = [(torch.zeros(size, **new), torch.zeros(size, **new)) for _ in self.text_model.layers]
            self.arena_tokens = capacity
        shape, count = (rows, self.kv_heads, length, self.head_dim), need * self.kv_heads * self.head_dim
        return [(keys[:count].view(shape), values[:count].view(shape)) for keys, values in self.arena]

    def release(self) -> None:
        """Free the arena and the graphs (e.g. after running out of memory)."""
        self.slots.clear()
        self.arena, self.arena_tokens = [], 0
        self.new_graph_pool()

    def _slot(self, rows: int, length: int, max_new: int, penalty, eos) -> DecodeSlot:
        key = (rows, length, max_new, penalty, eos)
        if key in self.slots:
            self.slots.move_to_end(key)
            return self.slots[key]
        vocab = self.model.lm_head.out_features
        slot = DecodeSlot(self._cache_layers(rows, length), rows, length, max_new, vocab, penalty, eos, self.device)
        self.slots[key] = slot
        while len(self.slots) > MAX_GRAPHS:
            self.slots.popitem(last=False)
        return slot

    # ------------------------------------------------------------------ a batch

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        generation_config,
        grids: dict,
        vision: dict,
    ) -> list[list[int]]:
        """Greedy new tokens of each row (up to and including its end token).

        input_ids, attention_mask, mm_token_type_ids [B, L0]: the full left-padded prompts (best on the CPU).
        grids: video_grid_thw (and second_per_grid_ts) of the rows, for their M-RoPE positions; vision: the pixel
        inputs (on the device).
        """
        effective = effective_generation_config(self.model, generation_config)
        max_new, eos = effective.max_new_tokens, end_token_ids(effective)
        penalty = effective.repetition_penalty if effective.repetition_penalty not in (None, 1.0) else None
        batch, prompt_length = input_ids.shape
        # The model's own rule (published or transformers'), as generate() computes it: [3, B, L0]; from CPU
        # inputs, so the host does not wait for the GPU.
        position_ids, _ = self.model.model.get_rope_index(
            input_ids=input_ids, mm_token_type_ids=mm_token_type_ids, attention_mask=attention_mask, **grids
        )
        input_ids, attention_mask, position_ids = (
            tensor.to(self.device, non_blocking=True) for tensor in (input_ids, attention_mask, position_ids)
        )
        rows = self._rows_for(batch)
        length = round_up(prompt_length + max_new + WARMUP_STEPS, self.length_step)
        try:
            slot = self._slot(rows, length, max_new, penalty, eos)
            self._reset(slot, input_ids, attention_mask)
            logits = self._prefill(slot, input_ids, position_ids, vision)
            choose_next(slot, logits, slice(0, batch))
            slot.positions[:, :batch, 0] = position_ids[:, :, -1] + 1  # decoding goes on after the last prompt
            slot.write_index[:batch] = prompt_length
            return self._decode(slot, batch, max_new, penalty, eos)
        except torch.OutOfMemoryError:
            self.release()
            raise

    def _reset(self, slot: DecodeSlot, input_ids, attention_mask) -> None:
        """A slot's state for a new batch: which slots each row attends to, and the repetition penalty's ids."""
        batch, prompt_length = input_ids.shape
        for tensor in slot.state():
            tensor.zero_()
        slot.valid[batch:, 0] = True  # dummy rows (graph padding) attend to one slot and never count as active
        slot.done[batch:] = True
        slot.valid[:batch, :prompt_length] = attention_mask.bool()
        if slot.seen is not None:  # the repetition penalty counts the row's prompt tokens, padding excluded
            counted = torch.where(attention_mask.bool(), input_ids, input_ids[:, -1:])  # [B, L0]
            slot.seen[:batch].scatter_(1, counted, True)

    def _prefill(self, slot: DecodeSlot, input_ids, position_ids, vision: dict) -> torch.Tensor:
        """Without a prefix: the whole prompts (with the video's pixels) through the model into the rows' cache;
        returns each row's last logits [B, V]."""
        batch, prompt_length = input_ids.shape
        causal = (
            torch.arange(slot.valid.shape[1], device=input_ids.device)[None, :]
            <= torch.arange(prompt_length, device=input_ids.device)[:, None]
        )  # [L0, L]
        slot.cache.prefill_at = 0
        try:
            return self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=slot.valid[:batch, None, None, :] & causal[None, None],  # [B, 1, L0, L]
                cache=slot.cache,
                use_cache=True,
                logits_to_keep=1,
                **vision,
            ).logits[:, -1]
        finally:
            slot.cache.prefill_at = None

    def _decode(self, slot: DecodeSlot, batch: int, max_new: int, penalty, eos) -> list[list[int]]:
        """Run decode steps until every row has ended or generated max_new tokens; drop finished rows on the way."""
        original = list(range(batch))  # original row of each slot row
        answers: dict[int, torch.Tensor] = {}
        generated = 1
        while generated < max_new:
            done = slot.done.tolist()  # the one host synchronization per check
            active = [r for r in range(len(original)) if not done[r]]
            for r in range(len(original)):
                if done[r] and original[r] not in answers:
                    answers[original[r]] = slot.out[r, :generated].cpu()
            if not active:
                break
            if self._rows_for(len(active)) <= len(slot.rows) // 2:  # at least half the rows are finished
                slot = self._drop_finished(slot, active, max_new, penalty, eos)
                original = [original[r] for r in active]
            steps = min(self.check_every, max_new - generated)
            with self._stage("generation"):
                self.run_steps(slot, partial(self.step, slot), steps)
            if self.timer is not None:
                self.timer.count_decode(steps, len(original))
            generated += steps
        out = slot.out[: len(original), :generated].cpu()
        for r, row in enumerate(original):
            answers.setdefault(row, out[r])
        return [until_end(answers[row], eos) for row in range(batch)]

    def _drop_finished(self, slot: DecodeSlot, active: list[int], max_new: int, penalty, eos) -> DecodeSlot:
        """Move the active rows to the front of a smaller slot (the same arena memory: row i of every shape is
        the same), so later steps compute only them."""
        keep = torch.tensor(active, device=self.device)
        smaller = self._slot(self._rows_for(len(active)), slot.valid.shape[1], max_new, penalty, eos)
        for (keys, values), (small_keys, small_values) in zip(slot.cache.layers, smaller.cache.layers, strict=True):
            small_keys[: len(active)] = keys[keep]  # gathered first, so overlapping rows are safe
            small_values[: len(active)] = values[keep]
        for old, new in zip(slot.state(), smaller.state(), strict=True):
            if old is slot.count:
                new.copy_(old)
            elif old is slot.positions:
                new.zero_()
                new[:, : len(active)] = old[:, keep]
            else:
                new.zero_()
                new[: len(active)] = old[keep]
        smaller.write_index[len(active) :] = smaller.write_index[0]  # dummy rows: in bounds, never active
        smaller.valid[len(active) :, 0] = True
        smaller.done[len(active) :] = True
        return smaller

    def _rows_for(self, rows: int) -> int:
        return graph_rows(rows) if self.graphs else rows

    def _stage(self, name: str):
        return self.timer.stage(name) if self.timer is not None else nullcontext()


def capture_step(step, state: list[torch.Tensor], pool) -> "torch.cuda.CUDAGraph":
    """`step()` recorded as a CUDA graph. The warm-up steps run for real, so `state` (the tensors a step reads and
    advances) is saved before and restored after; their cache writes land in slots the next real steps overwrite
    before anything reads them."""
    saved = [tensor.clone() for tensor in state]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for tensor, value in zip(state, saved, strict=True):
        tensor.copy_(value)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the background threads preparing videos (pinning memory) may call CUDA meanwhile.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        step()
    return graph


def choose_next(slot: DecodeSlot, logits: torch.Tensor, rows=slice(None)) -> None:
    """Greedy choice as HF's generate makes it (float32 scores, repetition penalty on seen ids, first maximum),
    recorded in the slot: out, count, done, seen, and the token fed next. logits [R, V]."""
    scores = logits.float()
    seen = slot.seen[rows] if slot.seen is not None else None
    if seen is not None:
        scores = torch.where(seen, torch.where(scores < 0, scores * slot.penalty, scores / slot.penalty), scores)
    next_tokens = scores.argmax(dim=-1)  # [R]
    index = slot.rows[rows]
    if seen is not None:
        slot.seen.index_put_((index, next_tokens), slot.true[rows])
    slot.out[index, slot.count.expand_as(index)] = next_tokens
    slot.done[rows] |= (next_tokens[:, None] == slot.eos[None, :]).any(dim=1)
    slot.tokens[rows] = next_tokens[:, None]
    slot.count.add_(1)


def until_end(tokens: torch.Tensor, eos: tuple[int, ...]) -> list[int]:
    """A row's tokens up to and including its first end token."""
    row = tokens.tolist()
    ends = [i for i, token in enumerate(row) if token in eos]
    return row[: ends[0] + 1] if ends else row
