"""A video prefix's cache made into the cache of a batch of questions, for every layer kind the Qwen-VL families use.

Attention layers (full, and Qwen4-Exp's indexed ones) skip padding through the attention mask, so a batch can be
[prefix | left padding | own tokens] in one prefill. Linear-attention (gated delta-net) layers cannot: they fold
every step, padding included, into a recurrent state and a convolution window. For models with such layers each
row's own tokens (all but the last) are prefilled without padding, rows of one length together, and the rows'
caches are then joined, the padding going only into the attention layers, where the mask hides it; generation
starts from each row's last own token.
"""

import copy

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicIndexedLayer, DynamicLayer, LinearAttentionLayer

# The cache layers whose rows this module can pad and join; others (sliding windows, hybrid layers) are not.
JOINABLE_LAYERS = (DynamicLayer, DynamicIndexedLayer, LinearAttentionLayer)


def prefix_reuse_problem(model) -> str | None:
    """Why a video prefix's cache cannot be reused exactly by this model, or None when it can."""
    layers = DynamicCache(config=model.config).layers
    others = sorted({type(layer).__name__ for layer in layers if type(layer) not in JOINABLE_LAYERS})
    if others:
        return f"its cache has {', '.join(others)} layers, which the shared prefix cannot pad exactly"
    return None


def has_linear_attention(cache) -> bool:
    return any(isinstance(layer, LinearAttentionLayer) for layer in cache.layers)


def repeated_cache(cache, rows: int):
    """A copy of a one-row cache with that row repeated `rows` times (any layer kind)."""
    cache = copy.deepcopy(cache)
    cache.reorder_cache(torch.zeros(rows, dtype=torch.long))
    return cache


def batch_cache(model, prefix_cache, prefix_inputs: dict, own: list[list[int]], grids: dict):
    """The cache a batch of questions continues from, for rows [prefix | left padding | own tokens] of length
    P + N (N the longest own part): all P prefix tokens cached, and, with linear attention, each row's own tokens
    but the last, so the cache spans P + N - 1 columns. prefix_inputs holds the prefix's input_ids and
    mm_token_type_ids [1, P]; grids the batch's video_grid_thw (and second_per_grid_ts), for the positions."""
    if not has_linear_attention(prefix_cache):
        return repeated_cache(prefix_cache, len(own))
    prefix_length, longest = prefix_inputs["input_ids"].shape[1], max(map(len, own))
    rows_of_length = {}
    for row, ids in enumerate(own):
        rows_of_length.setdefault(len(ids), []).append(row)
    caches, pads, order = [], [], []
    for length, rows in sorted(rows_of_length.items()):
        caches.append(prefill_own_tokens(model, prefix_cache, prefix_inputs, [own[r] for r in rows], grids))
        pads.append(longest - length)
        order += rows
    # Row i of the joined cache is row order[i] of the batch; reorder_cache puts them back in batch order.
    cache = joined_cache(caches, pads, prefix_length)
    cache.reorder_cache(torch.tensor(order).argsort())
    return cache


def prefill_own_tokens(model, prefix_cache, prefix_inputs: dict, own: list[list[int]], grids: dict):
    """A copy of the prefix cache, one row per question, with the questions' own tokens but the last prefilled
    after it. All questions have the same number n of own tokens, so there is no padding."""
    device = model.device
    rows, n = len(own), len(own[0])
    cache = repeated_cache(prefix_cache, rows)
    if n == 1:
        return cache
    own_ids = torch.tensor(own, device=device)  # [G, n]
    input_ids = torch.cat([prefix_inputs["input_ids"].expand(rows, -1), own_ids], dim=1)  # [G, P + n]
    token_types = prefix_inputs["mm_token_type_ids"]
    token_types = torch.cat([token_types.expand(rows, -1), token_types.new_zeros(rows, n)], dim=1)  # [G, P + n]
    # The rows' positions from their whole prompts, by the rule the model uses (published or transformers').
    position_ids, _ = model.model.get_rope_index(
        input_ids=input_ids,
        mm_token_type_ids=token_types,
        attention_mask=torch.ones_like(input_ids),
        **{key: value[:rows] for key, value in grids.items()},
    )  # [3, G, P + n]
    prefix_length = prefix_inputs["input_ids"].shape[1]
    model(
        input_ids=own_ids[:, :-1],
        attention_mask=torch.ones_like(input_ids[:, :-1]),
        position_ids=position_ids[:, :, prefix_length:-1],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return cache


def pad_after_prefix(tensor: torch.Tensor, dim: int, prefix_length: int, count: int) -> torch.Tensor:
    """`tensor` with `count` zeros inserted along `dim` after its first `prefix_length` entries."""
    if count == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = count
    rest = tensor.shape[dim] - prefix_length
    return torch.cat(
        [tensor.narrow(dim, 0, prefix_length), tensor.new_zeros(shape), tensor.narrow(dim, prefix_length, rest)], dim
    )


def joined_cache(caches: list, pads: list[int], prefix_length: int):
    """The rows of `caches` in one cache, in order; cache k's attention layers get pads[k] padding columns after
    the prefix, so all end in the same column. Joins into the first cache."""
    joined = caches[0]
    for index, layer in enumerate(joined.layers):
        parts = [cache.layers[index] for cache in caches]
        if isinstance(layer, LinearAttentionLayer):  # states without a sequence dimension: [rows, ...]
            for state in range(layer.number_of_states):
                if layer.is_conv_states_initialized[state]:
                    layer.conv_states[state] = torch.cat([part.conv_states[state] for part in parts])
                if layer.is_recurrent_states_initialized[state]:
                    layer.recurrent_states[state] = torch.cat([part.recurrent_states[state] for part in parts])
            # transformers >= 5.25 counts the tokens a linear layer has seen, and the cache's length
            # (get_seq_length, by which generate() cuts the prompt) is layer 0's count, a linear layer in these
            # families: count the padding the attention layers get, so every layer says prefix + longest row - 1.
            if hasattr(layer, "cumulative_length_linear"):
                layer.cumulative_length_linear.add_(pads[0])
            continue
        padded = [(part, pad) for part, pad in zip(parts, pads, strict=True)]
        # keys, values [rows, heads, length, head_dim]
        layer.keys = torch.cat([pad_after_prefix(part.keys, 2, prefix_length, pad) for part, pad in padded])
        layer.values = torch.cat([pad_after_prefix(part.values, 2, prefix_length, pad) for part, pad in padded])
        if isinstance(layer, DynamicIndexedLayer):
            if layer.is_indexer_initialized:  # [rows, length, index_head_dim]
                keys = [pad_after_prefix(part.indexer_keys, 1, prefix_length, pad) for part, pad in padded]
                layer.indexer_keys = torch.cat(keys)
            if layer.indexer_position_ids is not None:  # [3, rows, length]
                positions = [pad_after_prefix(part.indexer_position_ids, 2, prefix_length, pad) for part, pad in padded]
                layer.indexer_position_ids = torch.cat(positions, dim=1)
    return joined
