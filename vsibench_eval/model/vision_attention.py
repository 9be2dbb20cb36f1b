"""The vision encoder's attention in a few calls per layer instead of one per window.

Without flash-attn, transformers' Qwen-VL vision attention splits the packed patches at `cu_seqlens` (a host
sync per layer) and calls sdpa once per window of each frame: thousands of small calls per video. An attention
implementation whose name contains "flash" is handed the whole packed sequence and its `cu_seqlens` in one call
instead; ours, registered through transformers' AttentionInterface under such a name, answers it with

- on CUDA in bf16/fp16, torch's variable-length attention (`torch.nn.attention.varlen`): one call;
- elsewhere, the windows stacked as a batch: those whose length is a multiple of 16 in one call, padded to
  the longest with the padding masked, the others one call per length. Each window's arithmetic is then that of
  its own sdpa call, so the encoder's output is bitwise transformers' own (float32, CPU). Per-frame segments
  (Qwen2-VL, Qwen3-VL, and Qwen2.5-VL's full-attention layers) all share one length: one call. Qwen2.5-VL's
  windowed layers take one call, and one more for the windows in frames' bottom-right corners when the frame's
  edges cut them short (at most two).

Only the vision encoder's config is switched, and only from sdpa: flash-attn, when loaded, keeps its own path,
and the text model's attention is untouched.
"""

from collections import deque

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from vsibench_eval.model.families import QWEN_VL_MODEL_TYPES

# transformers passes the packed sequence with cu_seqlens only to implementations whose name contains "flash".
PACKED_ATTENTION = "flash_compatible_packed_sdpa"

# Segments whose length is a multiple of this are padded into one masked sdpa call: the masked keys weigh exactly
# zero, and such lengths keep the kernel's vector loops as they are, so each segment's output is bitwise that of
# its own call (the tests check it against transformers' per-window loop; checked with torch's AVX-512, AVX2 and
# plain CPU kernels). Qwen2.5-VL's windows are 4 x 4 merged patches of 4: every window but a frame's bottom-right
# corner has a multiple of 16 tokens, so a windowed layer takes at most two calls.
PADDABLE = 16

# The window plans of the last cu_seqlens tensors seen (the encoder passes the same two tensors, windows and
# frames, to every layer), so each is read back to the host once per video, not once per layer.
_plans: deque[tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]] = deque(maxlen=4)
_varlen_failed: list[str] = []  # why varlen attention was given up, once it failed


def use_packed_vision_attention(model) -> str:
    """Switch the vision encoder of a Qwen-VL model from per-window sdpa to packed attention; returns the vision
    attention in use, "packed" or the unchanged one (flash-attn, eager, or a family outside the Qwen-VL ones)."""
    vision_config = model.model.visual.config
    if model.config.model_type in QWEN_VL_MODEL_TYPES and vision_config._attn_implementation == "sdpa":
        AttentionInterface.register(PACKED_ATTENTION, packed_attention)
        vision_config._attn_implementation = PACKED_ATTENTION
    implementation = vision_config._attn_implementation
    return "packed" if implementation == PACKED_ATTENTION else implementation


def packed_attention(
    module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, cu_seq_lens_q=None, **kwargs
):
    """Attention within each segment of `cu_seq_lens_q` (non-causal, no mask): query, key, value [1, heads,
    tokens, head_dim]; returns ([1, tokens, heads, head_dim], None), as transformers' implementations do."""
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and not _varlen_failed:
        try:
            return varlen_attention(query, key, value, cu_seq_lens_q, kwargs["max_length_q"], scaling)[None], None
        except Exception as failure:  # e.g. no flash kernel for this GPU: batch the windows instead
            _varlen_failed.append(f"{type(failure).__name__}: {failure}")
    plan = window_plan(cu_seq_lens_q)
    return windows_attention(query[0], key[0], value[0], plan, scaling)[None], None


def varlen_attention(query, key, value, cu_seqlens: torch.Tensor, max_length: int, scaling) -> torch.Tensor:
    """One variable-length attention call over all segments: [tokens, heads, head_dim]."""
    from torch.nn.attention.varlen import varlen_attn

    query, key, value = (tensor[0].transpose(0, 1).contiguous() for tensor in (query, key, value))
    cu_seqlens = cu_seqlens.to(torch.int32)
    return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_length, max_length, scale=scaling)


def window_plan(cu_seqlens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The segments in groups, one sdpa call each: (token indices [segments, length], which of them are real
    [segments, length] or None when all are). Segments whose length is a multiple of PADDABLE share one group,
    padded to the longest of them (the padding masked); the others are grouped by length. Remembered for the
    tensor, which every layer of one encoder pass receives."""
    for seen, plan in _plans:
        if seen is cu_seqlens:
            return plan
    bounds = cu_seqlens.tolist()
    starts_by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:
            starts_by_length.setdefault(end - start, []).append(start)
    device = cu_seqlens.device
    paddable = {length: starts for length, starts in starts_by_length.items() if length % PADDABLE == 0}
    plan = []
    if paddable:
        width = max(paddable)
        starts = torch.tensor([start for starts in paddable.values() for start in starts], device=device)
        lengths = torch.tensor([length for length, starts in paddable.items() for _ in starts], device=device)
        offsets = torch.arange(width, device=device)
        real = offsets[None, :] < lengths[:, None]  # [segments, width]
        index = starts[:, None] + torch.where(real, offsets, 0)  # padding points at the segment's first token
        plan.append((index, None if bool(real.all()) else real))
    for length, starts in starts_by_length.items():
        if length not in paddable:
            plan.append((torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device), None))
    _plans.append((cu_seqlens, plan))
    return plan


def windows_attention(query, key, value, plan: list[tuple[torch.Tensor, torch.Tensor | None]], scaling):
    """query, key, value [heads, tokens, head_dim]; one sdpa call per group of the plan (window_plan), each
    segment a batch row; returns [tokens, heads, head_dim]."""
    heads, tokens, head_dim = query.shape
    (first, real), *others = plan
    if not others and real is None and first.numel() == tokens:  # equal segments in order: a view, no gather
        segments = tokens // first.shape[1]
        rows = [tensor.view(heads, segments, -1, head_dim).transpose(0, 1) for tensor in (query, key, value)]
        output = F.scaled_dot_product_attention(*rows, scale=scaling)  # [segments, heads, length, head_dim]
        return output.transpose(1, 2).reshape(tokens, heads, head_dim)
    output = query.new_empty(tokens, heads, head_dim)
    for index, real in plan:  # index, real [segments, length]
        rows = [tensor[:, index].transpose(0, 1) for tensor in (query, key, value)]  # [segments, heads, length, D]
        mask = real[:, None, None, :] if real is not None else None  # padded keys weigh nothing
        answer = F.scaled_dot_product_attention(*rows, attn_mask=mask, scale=scaling).transpose(1, 2)
        if real is None:
            output[index.flatten()] = answer.flatten(0, 1)
        else:  # the padded queries' rows are dropped
            output[index[real]] = answer[real]
    return output
