"""M-RoPE positions by the published rule, and a loaded model made to use them.

Qwen-VL models rotate queries and keys by three positions per token: temporal, height and width; a text token
has the same value in all three. The rule the models were trained with (the Qwen team's code, which vLLM
follows): the tokens of an image or video block get start + (temporal index, merged-grid row, merged-grid
column), where start is the text position at which the block begins, and the text after a block continues at
the largest position so far + 1. transformers 5.24 continues at start + max(rows, columns) instead, ignoring the
temporal extent, so after a long video the question lands inside the video's time range. The functions below
compute the published rule and make a loaded model use it.
"""

import torch

from vsibench_eval.model.families import FRAME_BLOCK_MODEL_TYPES, QWEN_VL_MODEL_TYPES

TEXT, IMAGE, VIDEO = 0, 1, 2  # the values of mm_token_type_ids


def vision_blocks(config, image_grid_thw, video_grid_thw, second_per_grid_ts) -> dict:
    """Per modality, an iterator over the batch's vision blocks in prompt order: (grid_thw, seconds per
    temporal grid), grid_thw a list [t, h, w] in patches.

    The Qwen3-VL-style families (FRAME_BLOCK_MODEL_TYPES) write each temporal grid of a video as its own block
    between timestamp texts, so their video grids are split into blocks of one temporal grid each.
    """
    images = [(grid, None) for grid in image_grid_thw.tolist()] if image_grid_thw is not None else []
    if second_per_grid_ts is not None:
        second_per_grid_ts = torch.as_tensor(second_per_grid_ts).cpu()  # positions are computed on the CPU
    videos = []
    for k, (t, h, w) in enumerate(video_grid_thw.tolist() if video_grid_thw is not None else []):
        seconds_per_grid = second_per_grid_ts[k] if second_per_grid_ts is not None else 1.0
        if config.model_type in FRAME_BLOCK_MODEL_TYPES:
            videos += [([1, h, w], seconds_per_grid)] * t
        else:
            videos.append(([t, h, w], seconds_per_grid))
    return {IMAGE: iter(images), VIDEO: iter(videos)}


def temporal_indices(config, modality, num_grids, seconds_per_grid) -> torch.Tensor:
    """Temporal index of each temporal grid of one block, before the start offset: [num_grids]."""
    grids = torch.arange(num_grids)  # [t]
    if config.model_type == "qwen2_5_vl" and modality == VIDEO:
        # Time in units of 1 / tokens_per_second: floor(i × seconds_per_grid × tokens_per_second), multiplied
        # left to right in float32 and truncated, as the Qwen code does.
        return (grids * seconds_per_grid * config.vision_config.tokens_per_second).long()
    return grids  # Qwen2-VL counts grids; an image or a Qwen3-VL-style video block has one grid, index 0


def vision_block_positions(config, modality, grid_thw, seconds_per_grid, start) -> torch.Tensor:
    """Positions [3, t·h·w / merge²] of one image or video block whose first token comes at position `start`.

    The tokens run over (temporal grid, merged row, merged column) in that order, as the vision tower emits them.
    """
    merge = config.vision_config.spatial_merge_size
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    temporal = temporal_indices(config, modality, t, seconds_per_grid)  # [t]
    grid = torch.meshgrid(temporal, torch.arange(h), torch.arange(w), indexing="ij")  # 3 × [t, h, w]
    return torch.stack(grid).reshape(3, -1) + start


def row_positions(config, token_types, blocks) -> torch.Tensor:
    """Positions [3, n] of one row's n unpadded tokens, given their mm_token_type_ids [n]."""
    pieces, next_position = [], 0
    modalities, lengths = torch.unique_consecutive(token_types, return_counts=True)  # runs of one modality
    for modality, length in zip(modalities.tolist(), lengths.tolist(), strict=True):
        if modality == TEXT:
            piece = torch.arange(length).expand(3, -1) + next_position  # [3, length]
        else:
            name = "image" if modality == IMAGE else "video"
            grid_thw, seconds_per_grid = next(blocks[modality], (None, None))
            if grid_thw is None:
                raise ValueError(f"the prompt has more {name} blocks than {name}_grid_thw describes")
            piece = vision_block_positions(config, modality, grid_thw, seconds_per_grid, next_position)
            if piece.shape[1] != length:
                raise ValueError(f"a block of {length} {name} tokens, but its grid {grid_thw} makes {piece.shape[1]}")
        pieces.append(piece)
        # Each piece starts above everything before it, so its maximum is the largest position so far.
        next_position = int(piece.max()) + 1
    return torch.cat(pieces, dim=1)


def mrope_position_ids(
    config,
    input_ids,
    mm_token_type_ids,
    attention_mask=None,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions of a batch by the published rule, with the conventions of transformers' get_rope_index.

    config is the model's top-level config. input_ids, mm_token_type_ids (0 text, 1 image, 2 video) and
    attention_mask (0 marks padding) are [B, L]. image_grid_thw [num_images, 3], video_grid_thw [num_videos, 3]
    and second_per_grid_ts [num_videos] (Qwen2.5-VL; 1.0 s when missing) list the whole batch's images and
    videos in prompt order, so rows may hold different numbers of them.

    Returns position_ids [3, B, L], padding at 0 as transformers 5.24 puts it, and rope_deltas [B, 1]: the row's
    largest position + 1 - its number of unpadded tokens, so that the n-th unpadded token of a row (from 0)
    sits at n + rope_deltas when decoding goes on after the prompt.
    """
    if config.model_type not in QWEN_VL_MODEL_TYPES:
        raise ValueError(f"M-RoPE positions for {config.model_type!r}: expected one of {QWEN_VL_MODEL_TYPES}")
    batch_size, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep = attention_mask.bool().cpu()  # [B, L]
    token_types = mm_token_type_ids.cpu()  # [B, L]
    blocks = vision_blocks(config, image_grid_thw, video_grid_thw, second_per_grid_ts)

    position_ids = torch.zeros(3, batch_size, length, dtype=input_ids.dtype)  # [3, B, L]
    rope_deltas = torch.zeros(batch_size, 1, dtype=torch.long)  # [B, 1]
    for row in range(batch_size):
        positions = row_positions(config, token_types[row][keep[row]], blocks)  # [3, n]
        position_ids[:, row, keep[row]] = positions
        rope_deltas[row] = positions.max() + 1 - positions.shape[1]
    return position_ids.to(input_ids.device), rope_deltas.to(input_ids.device)


def use_published_positions(model):
    """Make a loaded Qwen-VL model (AutoModelForImageTextToText) use `mrope_position_ids`, prefill and decoding.

    transformers 5.24 computes M-RoPE positions only through `model.model.get_rope_index`, looked up on the
    instance. `generate` calls it once for the prompt, stores its rope_deltas in `model.model.rope_deltas` and
    passes the positions to every step, extended by the last prompt position + 1 per new token; the prompt ends
    in text at the row's largest position, so decoding continues at max + 1. A forward step on a cache without
    position_ids, and generate() continuing a cached prefix, use the token index + the stored rope_deltas instead,
    which is the same max + 1. Replacing the method on this instance therefore covers prefill and decoding.
    Returns the model.
    """
    config = model.config

    def get_rope_index(
        input_ids,
        mm_token_type_ids,
        image_grid_thw=None,
        video_grid_thw=None,
        second_per_grid_ts=None,
        attention_mask=None,
        **kwargs,
    ):
        # generate() passes all its model kwargs (pixel values, cache, ...); positions need none of the rest.
        return mrope_position_ids(
            config, input_ids, mm_token_type_ids, attention_mask, image_grid_thw, video_grid_thw, second_per_grid_ts
        )

    model.model.get_rope_index = get_rope_index
    model.model.rope_deltas = None  # any stored deltas came from transformers' rule
    return model


TOKEN_KINDS = {TEXT: "a text", IMAGE: "an image", VIDEO: "a video"}


def describe_token(token_types, index) -> str:
    """'the first text token after a video', 'a video token', ... for token `index` of a row's types."""
    if index > 0 and token_types[index] == TEXT and token_types[index - 1] != TEXT:
        return f"the first text token after {TOKEN_KINDS[token_types[index - 1]]}"
    return f"{TOKEN_KINDS[token_types[index]]} token"


def format_position(position) -> str:
    """One number where temporal, height and width agree (text), else the three of them."""
    t, h, w = position.tolist()
    return str(t) if t == h == w else f"(t, h, w) = ({t}, {h}, {w})"


def compare_positions(model, inputs) -> str:
    """One sentence for a log: do transformers' own M-RoPE positions of this processed prompt follow the
    published rule, and if not, where and by how much do they first differ."""
    vision = {key: inputs.get(key) for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    input_ids, token_types = inputs["input_ids"], inputs["mm_token_type_ids"]  # [B, L]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # The class's method: the instance's may have been replaced by use_published_positions.
    original, _ = type(model.model).get_rope_index(
        model.model, input_ids, token_types, attention_mask=attention_mask, **vision
    )
    published, _ = mrope_position_ids(model.config, input_ids, token_types, attention_mask, **vision)

    keep = attention_mask.bool().cpu()  # [B, L]
    differs = (original.cpu() != published.cpu()).any(dim=0) & keep  # [B, L]
    if not differs.any():
        return f"transformers' M-RoPE positions agree with the published rule on all {int(keep.sum())} tokens."
    row, column = (int(i) for i in differs.nonzero()[0])
    row_types = token_types[row][keep[row]].tolist()
    index = int(keep[row, :column].sum())  # among the row's unpadded tokens
    where = f"token {index} of {len(row_types)}" + (f" in row {row}" if input_ids.shape[0] > 1 else "")
    return (
        f"transformers' M-RoPE positions differ from the published rule from {where} "
        f"({describe_token(row_types, index)}): transformers {format_position(original[:, row, column])}, "
        f"published {format_position(published[:, row, column])}; {int(differs.sum())} tokens differ."
    )
