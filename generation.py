"""Qwen-VL models: loading, and greedy answers to questions about one video.

Two paths give token-identical answers:
- plain: each question's full prompt (chat text with the video) goes through the vision encoder and a
  full prefill, as the usual pipelines do;
- shared prefix: the vision encoder and the prefill of the prompt prefix every question of a video shares
  (system prompt and video tokens) run once per video; each question then prefills only its own tokens,
  from a copy of the prefix's KV cache.
"""

import os
import time
from dataclasses import dataclass
from functools import partial

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache, GenerationConfig
from transformers.utils import is_flash_attn_2_available

from prefix_cache import batch_cache
from qwen_vl_utils import VideoFrames, use_published_positions

VIDEO_PAD, VISION_END = "<|video_pad|>", "<|vision_end|>"


def load_model(model_name: str, device: str, mrope_positions: str = "published", trust_remote_code: bool = False):
    """Processor and model in eval mode: bf16 + flash-attn (when installed) on GPU, float32 + sdpa on CPU,
    with M-RoPE positions by the published rule unless `mrope_positions` is "transformers"."""
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    attention = "flash_attention_2" if on_gpu and is_flash_attn_2_available() else "sdpa"
    processor = AutoProcessor.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(
        model_name, dtype=dtype, attn_implementation=attention, trust_remote_code=trust_remote_code
    )
    if mrope_positions == "published":
        use_published_positions(model)
    info = {"dtype": str(dtype).removeprefix("torch."), "attention": attention, "mrope_positions": mrope_positions}
    return model.to(device).eval(), processor, info


def chat_text(processor, prompt: str) -> str:
    """The chat-formatted model input: the video first, then the prompt (the benchmark's order)."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def processor_inputs(processor, video: VideoFrames, texts: list[str], position_fps: str):
    """Tokenized, left-padded chat texts that each hold the video once, with its pixel patches."""
    inputs = processor(
        text=texts,
        videos=[video.frames] * len(texts),
        video_metadata=[video.metadata()] * len(texts),
        do_sample_frames=False,  # frames are already sampled and resized
        do_resize=False,
        padding=True,
        return_tensors="pt",
    )
    if "second_per_grid_ts" in inputs:
        # Qwen2.5-VL's time code: seconds per temporal grid, with frames `position_fps` apart or, for
        # "sampled", as far apart as the sampled frames really are.
        seconds_per_frame = video.frame_spacing() if position_fps == "sampled" else 1.0 / float(position_fps)
        step = processor.video_processor.temporal_patch_size * seconds_per_frame
        inputs["second_per_grid_ts"] = torch.full((len(texts),), step)
    return inputs


def greedy(model, processor, max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
    )


def new_text(processor, output: torch.Tensor, prompt_length: int) -> list[str]:
    """The generated text of each row of `output` [B, prompt_length + new]."""
    new_tokens = output[:, prompt_length:]
    return processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------- plain path


@torch.inference_mode()
def generate_plain(model, processor, video: VideoFrames, texts: list[str], position_fps: str, max_new_tokens: int):
    """Answers to chat texts about one video, each through the vision encoder and a full prefill."""
    inputs = processor_inputs(processor, video, texts, position_fps).to(model.device)
    model.model.rope_deltas = None  # positions come from this prompt, not an earlier one
    output = model.generate(**inputs, generation_config=greedy(model, processor, max_new_tokens))
    return new_text(processor, output, inputs["input_ids"].shape[1])


# ---------------------------------------------------------------- shared-prefix path


@dataclass
class VideoPrefix:
    """The part of a video's chat texts that all its questions share, run through the model once."""

    text: str  # the shared chat text, ending with the video block
    inputs: dict  # its input_ids [1, P], mm_token_type_ids [1, P], video_grid_thw [1, 3] (+ second_per_grid_ts)
    cache: DynamicCache  # keys and values of its P tokens


def shared_prefix_text(texts: list[str]) -> str | None:
    """The longest start all texts share, cut right after the video block (a special token, so a token
    boundary); None when the video is not inside the shared start (e.g. a per-question text before it)."""
    common = os.path.commonprefix(texts)
    end = common.rfind(VISION_END)
    if end < 0 or VIDEO_PAD not in common[:end]:
        return None
    return common[: end + len(VISION_END)]


@torch.inference_mode()
def prefill_prefix(model, processor, video: VideoFrames, prefix_text: str, position_fps: str) -> VideoPrefix:
    """Run the vision encoder and prefill the shared prefix once; keep its KV cache."""
    inputs = processor_inputs(processor, video, [prefix_text], position_fps).to(model.device)
    cache = DynamicCache(config=model.config)
    model.model.rope_deltas = None
    model(**inputs, cache=cache, use_cache=True, logits_to_keep=1)
    keep = ("input_ids", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts")  # pixels are done with
    return VideoPrefix(prefix_text, {k: inputs[k] for k in keep if k in inputs}, cache)


@torch.inference_mode()
def generate_from_prefix(model, processor, prefix: VideoPrefix, texts: list[str], max_new_tokens: int) -> list[str]:
    """Answers to chat texts that start with `prefix.text`, prefilling only what follows it.

    Row r of the batch is [prefix tokens | left padding | its own tokens]; the attention mask hides the
    padding, and the M-RoPE positions are computed from the whole prompt (the grids are passed for that),
    so every row sees exactly the tokens and positions of the plain path. Linear-attention layers (Qwen3.5,
    Qwen4-Exp) would fold the padding into their state, so there each row's own tokens are prefilled without
    padding first (prefix_cache.batch_cache).
    """
    tokenizer = processor.tokenizer
    own = []
    for text in texts:
        if not text.startswith(prefix.text):
            raise ValueError("a chat text does not start with the video's shared prefix")
        own.append(tokenizer(text[len(prefix.text) :], add_special_tokens=False)["input_ids"])
    device = model.device
    batch, prefix_length, own_length = len(texts), prefix.inputs["input_ids"].shape[1], max(map(len, own))
    length = prefix_length + own_length
    input_ids = torch.full((batch, length), tokenizer.pad_token_id, dtype=torch.long, device=device)  # [B, L]
    attention_mask = torch.zeros((batch, length), dtype=torch.long, device=device)  # [B, L]
    mm_token_type_ids = torch.zeros_like(input_ids, dtype=prefix.inputs["mm_token_type_ids"].dtype)  # [B, L]
    input_ids[:, :prefix_length] = prefix.inputs["input_ids"]
    mm_token_type_ids[:, :prefix_length] = prefix.inputs["mm_token_type_ids"]
    attention_mask[:, :prefix_length] = 1
    for row, ids in enumerate(own):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, device=device)
        attention_mask[row, length - len(ids) :] = 1

    grids = {"video_grid_thw": prefix.inputs["video_grid_thw"].repeat(batch, 1)}
    if "second_per_grid_ts" in prefix.inputs:
        grids["second_per_grid_ts"] = prefix.inputs["second_per_grid_ts"].repeat(batch)
    cache = batch_cache(model, prefix.cache, prefix.inputs, own, grids)
    model.model.rope_deltas = None  # recomputed from the full prompts, not left over from the prefix pass
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=mm_token_type_ids,
        cache=cache,
        generation_config=greedy(model, processor, max_new_tokens),
        **grids,
    )
    return new_text(processor, output, length)


# ---------------------------------------------------------------- where the time goes


class StageTimer:
    """Seconds spent in the vision encoder, in prefill (language-model passes over more than one token per
    row) and in generation steps (one new token per row), and the number of prefill tokens (padding included),
    measured by forward hooks on the model, so both paths are measured the same way."""

    def __init__(self, model):
        self.seconds = {"vision_encoder": 0.0, "prefill": 0.0, "generation": 0.0}
        self.prefill_tokens = 0
        self._sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        self._started = 0.0
        self._stage = "vision_encoder"
        visual, language = model.model.visual, model.model.language_model
        self._hooks = [
            visual.register_forward_pre_hook(partial(self._start, "vision_encoder"), with_kwargs=True),
            visual.register_forward_hook(self._stop, with_kwargs=True),
            language.register_forward_pre_hook(self._start_language, with_kwargs=True),
            language.register_forward_hook(self._stop, with_kwargs=True),
        ]

    def remove(self):
        for hook in self._hooks:
            hook.remove()

    def _start(self, stage, module, args, kwargs):
        self._sync()
        self._stage, self._started = stage, time.perf_counter()

    def _start_language(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")  # [B, T, D]
        batch, new_tokens = embeds.shape[:2]
        if new_tokens > 1:
            self.prefill_tokens += batch * new_tokens
        self._start("prefill" if new_tokens > 1 else "generation", module, args, kwargs)

    def _stop(self, module, args, kwargs, output):
        self._sync()
        self.seconds[self._stage] += time.perf_counter() - self._started
