"""The arena: the cache slots and decode state where the questions of several videos decode together
(arena_decoder.py runs it), and the attention of its forwards.

It is one block of cache slots per layer, keys and values [1, kv_heads, slots, head_dim]:

    [ prefix region: the prefixes of the videos in play, one copy each | row 0 | row 1 | ... | row R-1 ]

Row r's slots hold its question's own tokens (its chat text after the video's prefix), then its answer. Every
forward, the prefill of newly admitted questions or a decode step, runs its tokens side by side as one sequence
[1, T] through the model's own layers against the arena, with a mask [T, slots] that lets each token see its
video's prefix and its own row up to itself, at its own M-RoPE positions: the keys, values and positions that its
left-padded row meets on transformers' path, so the same softmax. In float32 on a CPU every admission order and
arena size gives generate's tokens (tests/test_arena.py).
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

# The attention of an arena forward: sdpa, the query heads that share a key/value head stacked as that head's
# query rows (see grouped_query_attention); registered under this name through transformers' AttentionInterface.
ARENA_ATTENTION = "vsibench_arena_sdpa"


class Arena:
    """The cache slots and every row's decode state, at fixed addresses (a CUDA graph replays on them)."""

    def __init__(self, text_model, rows, row_length, prefix_slots, width, vocab, penalty, eos, device):
        attention = text_model.layers[0].self_attn
        kv_heads, head_dim = attention.k_proj.out_features // attention.head_dim, attention.head_dim
        self.rows, self.row_length, self.prefix_slots = rows, row_length, prefix_slots
        self.slots = prefix_slots + rows * row_length
        new = {"dtype": attention.k_proj.weight.dtype, "device": device}
        # Zeros, not empty: a masked slot still meets a zero weight (0 x NaN = NaN), so every slot must be finite.
        self.layers = [
            (
                torch.zeros(1, kv_heads, self.slots, head_dim, **new),
                torch.zeros(1, kv_heads, self.slots, head_dim, **new),
            )
            for _ in text_model.layers
        ]
        long = {"dtype": torch.long, "device": device}
        self.index = torch.arange(rows, **long)  # [R]
        self.row_start = prefix_slots + self.index * row_length  # [R] each row's first slot
        self.tokens = torch.zeros(rows, **long)  # the token each row feeds next
        self.positions = torch.zeros(3, rows, **long)  # its M-RoPE position
        self.write_slot = self.row_start.clone()  # where its next key and value go
        self.last_slot = self.row_start.clone()  # writes stop there (a free row's stays on its first slot)
        self.valid = torch.zeros(rows, self.slots, dtype=torch.bool, device=device)  # the slots each row sees
        self.valid[self.index, self.row_start] = True  # a free row sees one slot, so its softmax stays finite
        self.out = torch.zeros(rows, width, **long)  # the tokens generated so far
        self.count = torch.zeros(rows, **long)  # how many
        self.limit = torch.ones(rows, **long)  # most new tokens
        self.done = torch.ones(rows, dtype=torch.bool, device=device)  # ended (a free row counts as ended)
        self.true = torch.ones(rows, dtype=torch.bool, device=device)  # written by index (no host scalar in a graph)
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device) if penalty else None  # penalized ids
        self.penalty = penalty
        self.eos = torch.tensor(eos or (-1,), **long)  # -1 never matches
        self.free_prefix = [(0, prefix_slots)]  # (start, length) of the free stretches of the prefix region
        self.graph = None

    def state(self) -> list[torch.Tensor]:
        tensors = [self.tokens, self.positions, self.write_slot, self.valid, self.out, self.count, self.done]
        return tensors + ([self.seen] if self.seen is not None else [])

    def place(self, length: int) -> int | None:
        """The first slot of a free stretch of `length` slots in the prefix region (first fit), or None."""
        for i, (start, free) in enumerate(self.free_prefix):
            if free >= length:
                self.free_prefix[i : i + 1] = [(start + length, free - length)] if free > length else []
                return start
        return None

    def release(self, start: int, length: int) -> None:
        """Give a prefix's stretch back, merged with its free neighbours."""
        stretches = sorted([*self.free_prefix, (start, length)])
        merged = [stretches[0]]
        for begin, size in stretches[1:]:
            last_begin, last_size = merged[-1]
            if last_begin + last_size == begin:
                merged[-1] = (last_begin, last_size + size)
            else:
                merged.append((begin, size))
        self.free_prefix = merged


def grouped_query_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa over the arena without copying each key/value head for every query head that shares it (transformers'
    sdpa path copies them whenever a mask is given, a copy of the whole arena per layer and step): the query heads
    of a key/value head become extra query rows of it, each with its token's mask row. The same scores and softmax.
    query [1, Hq, T, D]; key, value [1, Hkv, S, D]; attention_mask [1, 1, T, S] (bool). Returns [1, T, Hq, D]."""
    _, heads, tokens, dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    query = query.reshape(1, kv_heads, groups * tokens, dim)  # head h uses key/value head h // groups
    mask = attention_mask.expand(1, groups, tokens, slots).reshape(1, 1, groups * tokens, slots)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(1, heads, tokens, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(ARENA_ATTENTION, grouped_query_attention)


@contextmanager
def arena_attention(text_config):
    """The text layers' attention switched from sdpa to grouped_query_attention for one arena forward."""
    used = text_config._attn_implementation
    if used == "sdpa":
        text_config._attn_implementation = ARENA_ATTENTION
    try:
        yield
    finally:
        text_config._attn_implementation = used


class ArenaCache:
    """What the attention layers see during an arena forward (duck-typed for transformers' `cache.update`): the
    forward's keys and values are written to their slots [T], and the slots it attends over are returned: the
    arena's first `read` slots (an int: a view, as a decode step reads), or the slots listed in `read` (a tensor
    [S']: a copy, as a prefill reads only its questions' prefixes and rows)."""

    def __init__(self, layers, slots: torch.Tensor, read: int | torch.Tensor):
        self.layers, self.slots, self.read = layers, slots, read

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.layers[layer_idx]  # [1, H, S, D]
        keys[0, :, self.slots] = key_states[0]  # [H, T, D]
        values[0, :, self.slots] = value_states[0]
        if isinstance(self.read, int):
            return keys[:, :, : self.read], values[:, :, : self.read]
        return keys[:, :, self.read], values[:, :, self.read]


def choose_next(arena: Arena, logits: torch.Tensor, rows: torch.Tensor) -> None:
    """Greedy choice as generate makes it (float32 scores, repetition penalty on seen ids, first maximum) for
    `rows` [B], recorded in the arena: out, count, done, seen, and the token fed next. logits [B, V]."""
    scores = logits.float()
    if arena.seen is not None:
        seen = arena.seen[rows]
        penalized = torch.where(scores < 0, scores * arena.penalty, scores / arena.penalty)
        scores = torch.where(seen, penalized, scores)
    next_tokens = scores.argmax(dim=-1)  # [B]
    if arena.seen is not None:
        arena.seen[rows, next_tokens] = arena.true[: len(rows)]
    count = arena.count[rows]
    arena.out[rows, count.clamp(max=arena.out.shape[1] - 1)] = next_tokens
    arena.count[rows] = count + 1
    ended = (next_tokens[:, None] == arena.eos[None, :]).any(dim=1) | (count + 1 >= arena.limit[rows])
    arena.done[rows] = arena.done[rows] | ended
    arena.tokens[rows] = next_tokens
