"""The questions of a video prefilled packed: their own tokens side by side in one sequence after one copy of the
video's prefix, with no padding between them. Each token attends to the whole prefix and, causally, to its own
question's tokens (a block-diagonal mask), at its own M-RoPE position, so it meets the keys and values it meets
in its own left-padded row; the fast decoder (decode.py) then places each question's keys and values in its row.
The prefill computes sum(question lengths) tokens instead of rows x the longest, and reads the prefix once.
"""

import torch


def packed_layout(attention_mask: torch.Tensor, prefix_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every question token in left-padded prompts [B, L0], row by row, in order: [N], [N]."""
    rows, columns = attention_mask[:, prefix_length:].bool().nonzero(as_tuple=True)
    return rows, columns + prefix_length


class PackedPrefixCache:
    """What the attention layers see during a packed prefill (duck-typed for transformers' `cache.update`): the
    prefix's keys and values [1, H, P, D] followed by the packed tokens' own, which it keeps per layer."""

    def __init__(self, prefix_cache):
        self.prefix_layers = prefix_cache.layers
        self.packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> keys, values [1, H, N, D]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.packed[layer_idx] = (key_states, value_states)
        prefix = self.prefix_layers[layer_idx]
        return torch.cat([prefix.keys, key_states], dim=2), torch.cat([prefix.values, value_states], dim=2)


def packed_mask(rows: torch.Tensor, columns: torch.Tensor, prefix_length: int) -> torch.Tensor:
    """[1, 1, N, P + N]: every token sees the prefix, and the tokens of its own row up to itself."""
    own = (rows[:, None] == rows[None, :]) & (columns[None, :] <= columns[:, None])  # [N, N]
    prefix = torch.ones(len(rows), prefix_length, dtype=torch.bool, device=rows.device)
    return torch.cat([prefix, own], dim=1)[None, None]


def last_token_of_each_row(rows: torch.Tensor) -> torch.Tensor:
    """Packed index of each row's last token: [B]."""
    ends = (rows[1:] != rows[:-1]).nonzero()[:, 0]
    return torch.cat([ends, ends.new_tensor([len(rows) - 1])])


@torch.inference_mode()
def prefill_packed(model, input_ids, position_ids, rows, columns, prefix_cache, prefix_length: int):
    """One forward over the packed question tokens of `input_ids` [B, L0] at `position_ids` [3, B, L0] (rows
    and columns from packed_layout, on the model's device). Returns the logits of each row's last token [B, V]
    and the PackedPrefixCache holding the packed keys and values."""
    cache = PackedPrefixCache(prefix_cache)
    logits = model(
        input_ids=input_ids[rows, columns][None],  # [1, N]
        position_ids=position_ids[:, rows, columns][:, None],  # [3, 1, N]
        attention_mask=packed_mask(rows, columns, prefix_length),
        cache=cache,
        use_cache=True,
        logits_to_keep=last_token_of_each_row(rows),
    ).logits  # [1, B, V]
    return logits[0], cache
