"""The vision encoder's attention in a few calls per layer instead of one per window.

Without flash-attn, transformers' Qwen-VL vision attention splits the packed patches at `cu_seqlens` (a host
sync per layer) and calls sdpa once per window of each frame: thousands of small calls per video. An attention
implementation whose name contains "flash" is handed the whole packed sequence and its `cu_seqlens` in one call
instead; ours, registered through transformers' AttentionInterface under such a name, answers it with

- on CUDA in bf16/fp16, torch's variable-length attention (`torch.nn.attention.varlen`): one call;
- elsewhere, one batched sdpa call per distinct window length: the equal-length windows stacked as a batch.
  Each window's arithmetic is then that of its own sdpa call, so the encoder's output is bitwise transformers'
  own (float32, CPU). Per-frame segments (Qwen2-VL, Qwen3-VL, and Qwen2.5-VL's full-attention layers) all share
  one length: one call. Qwen2.5-VL's windowed layers add one call per shorter window that a frame's edge cuts
  (at most 3 more; none when the frame's merged patches are a multiple of the window).

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


def window_plan(cu_seqlens: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """The segments grouped by length: (length, token indices [segments, length]) per distinct length, most
    frequent first; remembered for the tensor, which every layer of one encoder pass receives."""
    for seen, plan in _plans:
        if seen is cu_seqlens:
            return plan
    bounds = cu_seqlens.tolist()
    starts_by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:
            starts_by_length.setdefault(end - start, []).append(start)
    plan = []
    for length, starts in sorted(starts_by_length.items(), key=lambda item: -len(item[1])):
        first = torch.tensor(starts, device=cu_seqlens.device)[:, None]
        plan.append((length, first + torch.arange(length, device=cu_seqlens.device)))
    _plans.append((cu_seqlens, plan))
    return plan


def windows_attention(query, key, value, plan: list[tuple[int, torch.Tensor]], scaling) -> torch.Tensor:
    """query, key, value [heads, tokens, head_dim]; one sdpa call per group of equal-length segments, each
    segment a batch row; returns [tokens, heads, head_dim]."""
    heads, tokens, head_dim = query.shape
    if len(plan) == 1 and plan[0][1].numel() == tokens:  # equal segments in order: a view, no gather
        segments = tokens // plan[0][0]
        rows = [tensor.view(heads, segments, -1, head_dim).transpose(0, 1) for tensor in (query, key, value)]
        output = F.scaled_dot_product_attention(*rows, scale=scaling)  # [segments, heads, length, head_dim]
        return output.transpose(1, 2).reshape(tokens, heads, head_dim)
    output = query.new_empty(tokens, heads, head_dim)
    for _, index in plan:  # index [segments, length]
        rows = [tensor[:, index].transpose(0, 1) for tensor in (query, key, value)]  # [segments, heads, length, D]
        answer = F.scaled_dot_product_attention(*rows, scale=scaling)
        output[index.flatten()] = answer.transpose(1, 2).flatten(0, 1)
    return output
