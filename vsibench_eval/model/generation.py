"""Qwen-VL models: loading, and greedy answers to questions about one video.

Two paths give token-identical answers:
- plain: each question's full prompt (chat text with the video) goes through the vision encoder and a
  full prefill, as the usual pipelines do;
- shared prefix: the vision encoder and the prefill of the prompt prefix every question of a video shares
  (system prompt and video tokens) run once per video; each question then prefills only its own tokens,
  from a copy of the prefix's KV cache.
Either path generates with transformers' `generate`. The fast decoder gives the same tokens
(tests/test_decode.py, tests/test_arena.py): the plain path's with its static-cache loop (decode.FastDecoder),
the shared prefix's with its arena, where the questions of several videos decode together (arena_decoder.py).
"""

import copy
import os
import threading
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache, GenerationConfig
from transformers.utils import is_flash_attn_2_available

from vsibench_eval.inputs.frames import VideoFrames
from vsibench_eval.model.positions import use_published_positions
from vsibench_eval.model.prefix_cache import batch_cache
from vsibench_eval.model.vision_attention import use_packed_vision_attention

VIDEO_PAD, VISION_END = "<|video_pad|>", "<|vision_end|>"


def load_model(
    model_name: str, device: str, mrope_positions: str = "published", trust_remote_code: bool = False, dtype=None
):
    """Processor and model in eval mode: bf16 + flash-attn (when installed) on GPU, float32 + sdpa on CPU
    (unless `dtype` says otherwise), with M-RoPE positions by the published rule unless `mrope_positions` is
    "transformers"."""
    on_gpu = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    attention = "flash_attention_2" if on_gpu and is_flash_attn_2_available() else "sdpa"
    processor = AutoProcessor.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(  # weights go straight to the device
        model_name, dtype=dtype, attn_implementation=attention, trust_remote_code=trust_remote_code, device_map=device
    )
    info = set_up_for_evaluation(model, processor, mrope_positions)
    return model, processor, info


def set_up_for_evaluation(model, processor, mrope_positions: str) -> dict:
    """Eval mode, left padding, M-RoPE positions by the published rule unless `mrope_positions` is
    "transformers", the vision encoder's attention packed (vision_attention.py); returns what the worker's
    report says of the model (dtype, attention, positions)."""
    processor.tokenizer.padding_side = "left"
    if mrope_positions == "published":
        use_published_positions(model)
    model.eval()
    return {
        "dtype": str(model.dtype).removeprefix("torch."),
        "attention": model.config._attn_implementation,
        "vision_attention": use_packed_vision_attention(model),
        "mrope_positions": mrope_positions,
    }


@contextmanager
def lent_model(model, processor, mrope_positions: str = "published"):
    """A model and processor the caller holds (e.g. a training loop's), set up for evaluation as load_model sets
    up its own (set_up_for_evaluation), with no gradients. Afterwards the train/eval mode, the grad mode, the
    padding side, the model's own positions and its vision attention are as they were. Yields the info load_model
    returns."""
    inner, tokenizer = model.model, processor.tokenizer
    was_training, padding_side = model.training, tokenizer.padding_side
    vision_config = inner.visual.config
    vision_attention = vision_config._attn_implementation
    patched = vars(inner).get("get_rope_index")  # None unless the instance already carries its own
    deltas = getattr(inner, "rope_deltas", None)
    info = set_up_for_evaluation(model, processor, mrope_positions)
    try:
        with torch.no_grad():
            yield info
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
        vision_config._attn_implementation = vision_attention
        if patched is None:
            vars(inner).pop("get_rope_index", None)
        else:
            inner.get_rope_index = patched
        inner.rope_deltas = deltas


def chat_text(processor, prompt: str, system_prompt: str = "none", images: int = 0) -> str:
    """The chat-formatted model input: a system message unless `system_prompt` is "none" (then the chat
    template's default, if it has one, applies), then the user turn: the video first (or, given `images`, that
    many images, one per frame), then the prompt (the benchmark's order)."""
    vision = [{"type": "image"}] * images if images else [{"type": "video"}]
    messages = [{"role": "user", "content": [*vision, {"type": "text", "text": prompt}]}]
    if system_prompt != "none":
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def processor_inputs(processor, video: VideoFrames, texts: list[str], position_fps: str, video_input: str = "video"):
    """Tokenized, left-padded chat texts that each hold the video once, with its pixel patches. Records the
    patch grid on `video` (video.grid_thw: per frame when `video_input` is "images")."""
    if video_input == "images":
        return image_inputs(processor, video, texts)
    inputs = processor(
        text=texts,
        videos=[video.frames] * len(texts),
        video_metadata=[video.metadata()] * len(texts),
        do_sample_frames=False,  # frames are already sampled and resized
        do_resize=False,
        padding=True,
        return_tensors="pt",
    )
    video.grid_thw = inputs["video_grid_thw"][0].tolist()
    if "second_per_grid_ts" in inputs and position_fps != "metadata":
        # Qwen2.5-VL's time code: seconds per temporal grid, with frames `position_fps` apart or, for
        # "sampled", as far apart as the sampled frames really are. For "metadata" the processor's own value
        # stays: temporal_patch_size / (frames sampled / video duration), from the metadata.
        seconds_per_frame = video.frame_spacing() if position_fps == "sampled" else 1.0 / float(position_fps)
        step = processor.video_processor.temporal_patch_size * seconds_per_frame
        inputs["second_per_grid_ts"] = torch.full((len(texts),), step)
    return inputs


def image_inputs(processor, video: VideoFrames, texts: list[str]):
    """processor_inputs for chat texts that hold the frames as separate images (chat_text's `images`)."""
    inputs = processor(
        text=texts,
        images=[list(video.frames)] * len(texts),
        do_resize=False,  # frames are already sized
        padding=True,
        return_tensors="pt",
    )
    video.grid_thw = inputs["image_grid_thw"][0].tolist()
    return inputs


def decoding_config(model, processor, repetition_penalty: str = "checkpoint", eos_tokens: str = "checkpoint"):
    """The generation settings in force for greedy decoding: the checkpoint's generation_config.json, then
    greedy search, and the run's repetition penalty and stop tokens on top. Passed whole to generate(), so
    nothing is filled in from elsewhere (transformers fills every unset field from the checkpoint's file)."""
    config = copy.deepcopy(model.generation_config)
    config.update(**config._get_default_generation_params(), defaults_only=True)  # unset: transformers' defaults
    config.update(do_sample=False, num_beams=1, pad_token_id=processor.tokenizer.pad_token_id)
    if repetition_penalty != "checkpoint":
        config.repetition_penalty = float(repetition_penalty)
    if eos_tokens == "tokenizer":
        config.eos_token_id = processor.tokenizer.eos_token_id
    return config


def generation_settings(config: GenerationConfig) -> dict:
    """The fields of a generation config that differ from transformers' defaults (plus the length and
    search settings), for the log and summary.json."""
    defaults = GenerationConfig()._get_default_generation_params()
    settings = {key: value for key, value in config.to_diff_dict().items() if key != "transformers_version"}
    settings = {key: value for key, value in settings.items() if defaults.get(key, None) != value}
    keys = ("max_new_tokens", "do_sample", "num_beams", "repetition_penalty", "eos_token_id", "pad_token_id")
    return {key: getattr(config, key) for key in keys} | settings


def greedy(model, processor, max_new_tokens: int, decoding: GenerationConfig | None = None) -> GenerationConfig:
    """`decoding` (by default the checkpoint's settings made greedy) with this call's token limit."""
    config = copy.deepcopy(decoding if decoding is not None else decoding_config(model, processor))
    config.max_new_tokens = max_new_tokens
    config.max_length = None  # max_new_tokens decides; a leftover default of 20 only draws generate()'s warning
    return config


def new_text(processor, output: torch.Tensor, prompt_length: int) -> list[str]:
    """The generated text of each row of `output` [B, prompt_length + new]."""
    return token_text(processor, output[:, prompt_length:])


def token_text(processor, tokens) -> list[str]:
    """Text of each row of new tokens (a tensor [B, new] or lists), special tokens left out."""
    return processor.batch_decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def timed(timer, name: str, on_gpu: bool = True):
    """`timer.stage(name)` (a StageTimer), or nothing when there is no timer."""
    return timer.stage(name, on_gpu) if timer is not None else nullcontext()


def to_device(inputs: dict, device) -> dict:
    """Processor inputs on `device`; from pinned memory the copies overlap with the GPU's work."""
    non_blocking = torch.device(device).type == "cuda"
    return {key: value.to(device, non_blocking=non_blocking) for key, value in inputs.items()}


# ---------------------------------------------------------------- plain path


@torch.inference_mode()
def generate_plain(
    model,
    processor,
    video: VideoFrames,
    texts: list[str],
    position_fps: str,
    max_new_tokens: int,
    decoding=None,
    decoder=None,
    timer=None,
    video_input: str = "video",
):
    """Answers to chat texts about one video, each through the vision encoder and a full prefill. `decoding`:
    the run's generation config (decoding_config); with a `decoder` (decode.FastDecoder) its static-cache loop
    generates instead of transformers' generate; `timer`: a StageTimer for the processor and the copies to the
    device; `video_input`: the frames as one video or as images (processor_inputs)."""
    with timed(timer, "processor", on_gpu=False):
        inputs = processor_inputs(processor, video, texts, position_fps, video_input)
    config = greedy(model, processor, max_new_tokens, decoding)
    if decoder is not None:  # positions are computed from the CPU copies, so nothing waits for the GPU
        grids = {key: inputs[key] for key in GRID_INPUTS if key in inputs}
        with timed(timer, "host_to_device"):
            vision = to_device({key: value for key, value in inputs.items() if key not in TEXT_INPUTS}, model.device)
        rows = [inputs[key] for key in TEXT_INPUTS]
        return token_text(processor, decoder.generate(*rows, config, grids=grids, vision=vision))
    with timed(timer, "host_to_device"):
        inputs = to_device(inputs, model.device)
    model.model.rope_deltas = None  # positions come from this prompt, not an earlier one
    output = model.generate(**inputs, generation_config=config)
    return new_text(processor, output, inputs["input_ids"].shape[1])


TEXT_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")
GRID_INPUTS = ("video_grid_thw", "second_per_grid_ts", "image_grid_thw")


# ---------------------------------------------------------------- shared-prefix path


@dataclass
class VideoPrefix:
    """The part of a video's chat texts that all its questions share, run through the model once."""

    text: str  # the shared chat text, ending with the video block
    inputs: dict  # on the CPU: input_ids [1, P], mm_token_type_ids [1, P], video_grid_thw [1, 3] (+ second_per_grid_ts)
    cache: DynamicCache  # keys and values of its P tokens


def shared_prefix_text(texts: list[str]) -> str | None:
    """The longest start all texts share, cut right after the video block (a special token, so a token
    boundary); None when the video is not inside the shared start (e.g. a per-question text before it)."""
    common = os.path.commonprefix(texts)
    end = common.rfind(VISION_END)
    if end < 0 or VIDEO_PAD not in common[:end]:
        return None
    return common[: end + len(VISION_END)]


def prefix_inputs(processor, video: VideoFrames, prefix_text: str, position_fps: str, pin: bool = False):
    """The processor's inputs for a video's shared prefix (CPU work: tokenizing, patchifying the frames), in
    pinned memory when `pin`, so a worker can prepare the next video's while the GPU answers this one's."""
    inputs = processor_inputs(processor, video, [prefix_text], position_fps)
    return {key: value.pin_memory() if pin else value for key, value in inputs.items()}


@torch.inference_mode()
def prefill_prefix(model, processor, video: VideoFrames, prefix_text: str, position_fps: str, inputs=None, timer=None):
    """Run the vision encoder and prefill the shared prefix once; keep its KV cache. `inputs`: the prefix's
    processor inputs when already prepared (prefix_inputs); `timer`: a StageTimer."""
    if inputs is None:
        with timed(timer, "processor", on_gpu=False):
            inputs = prefix_inputs(processor, video, prefix_text, position_fps)
    with timed(timer, "host_to_device"):
        on_device = to_device(inputs, model.device)
    cache = DynamicCache(config=model.config)
    model.model.rope_deltas = None
    model(**on_device, cache=cache, use_cache=True, logits_to_keep=1)
    keep = ("input_ids", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts")  # pixels are done with
    return VideoPrefix(prefix_text, {k: inputs[k] for k in keep if k in inputs}, cache)


@torch.inference_mode()
def generate_from_prefix(
    model, processor, prefix: VideoPrefix, texts: list[str], max_new_tokens: int, decoding=None
) -> list[str]:
    """Answers to chat texts that start with `prefix.text`, prefilling only what follows it, by transformers'
    generate (the fast decoder answers such questions in its arena: arena_decoder.py). `decoding`: the run's generation
    config.

    Row r of the batch is [prefix tokens | left padding | its own tokens]; the attention mask hides the
    padding, and the M-RoPE positions are computed from the whole prompt (the grids are passed for that),
    so every row sees exactly the tokens and positions of the plain path. Linear-attention layers (Qwen3.5,
    Qwen4-Exp) would fold the padding into their state, so there each row's own tokens are prefilled without
    padding first (prefix_cache.batch_cache).
    """
    own, rows, grids = question_rows(processor, prefix, texts)
    length = rows["input_ids"].shape[1]
    config = greedy(model, processor, max_new_tokens, decoding)
    cache = batch_cache(model, prefix.cache, prefix.inputs, own, grids)
    model.model.rope_deltas = None  # recomputed from the full prompts, not left over from the prefix pass
    output = model.generate(**to_device(rows | grids, model.device), cache=cache, generation_config=config)
    return new_text(processor, output, length)


def question_rows(processor, prefix: VideoPrefix, texts: list[str]) -> tuple[list[list[int]], dict, dict]:
    """The questions' own token ids (each text after `prefix.text`), their left-padded rows [prefix | left
    padding | own tokens] (input_ids, attention_mask, mm_token_type_ids [B, L], on the CPU) and the rows' grids
    (video_grid_thw, and second_per_grid_ts where the model has it), from which their positions are computed."""
    tokenizer = processor.tokenizer
    own = []
    for text in texts:
        if not text.startswith(prefix.text):
            raise ValueError("a chat text does not start with the video's shared prefix")
        own.append(tokenizer(text[len(prefix.text) :], add_special_tokens=False)["input_ids"])
    batch, prefix_length, own_length = len(texts), prefix.inputs["input_ids"].shape[1], max(map(len, own))
    length = prefix_length + own_length
    input_ids = torch.full((batch, length), tokenizer.pad_token_id, dtype=torch.long)  # [B, L]
    attention_mask = torch.zeros((batch, length), dtype=torch.long)  # [B, L]
    mm_token_type_ids = torch.zeros_like(input_ids, dtype=prefix.inputs["mm_token_type_ids"].dtype)  # [B, L]
    input_ids[:, :prefix_length] = prefix.inputs["input_ids"]
    mm_token_type_ids[:, :prefix_length] = prefix.inputs["mm_token_type_ids"]
    attention_mask[:, :prefix_length] = 1
    for row, ids in enumerate(own):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
    grids = {"video_grid_thw": prefix.inputs["video_grid_thw"].repeat(batch, 1)}
    if "second_per_grid_ts" in prefix.inputs:
        grids["second_per_grid_ts"] = prefix.inputs["second_per_grid_ts"].repeat(batch)
    rows = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids}
    return own, rows, grids


def video_token_count(processor, video: VideoFrames, video_input: str = "video") -> int:
    """How many video tokens the model sees for these frames (temporal grids x merged patches; as images, each
    frame is a grid of its own)."""
    video_processor = processor.video_processor
    frames, height, width = video.frames.shape[:3]
    grids = frames if video_input == "images" else -(-frames // video_processor.temporal_patch_size)
    merged_patch = video_processor.patch_size * video_processor.merge_size
    return grids * (height // merged_patch) * (width // merged_patch)


# ---------------------------------------------------------------- where the time goes


class StageTimer:
    """Seconds spent in the processor (CPU), host-to-device copies, the vision encoder, prefill (language-model
    passes over more than one token per row) and generation steps (one new token per row); the number of
    prefill tokens (padding included), of decode steps, and of the rows those steps carried (decoded_tokens:
    finished rows still in the batch count, a graph's padding rows do not), so rows per step can be read off.

    The model's passes are measured by forward hooks; the fast decoder's steps (which bypass the hooks) and the
    copies report through `stage`, the processor through `stage(..., on_gpu=False)` or `add`. On CUDA a GPU
    stage is a pair of CUDA events read when `seconds` is asked for, so measuring never makes the host wait for
    the GPU; CPU stages and everything on a CPU device are wall-clock time.
    """

    def __init__(self, model):
        self.totals = {name: 0.0 for name in ("vision_encoder", "prefill", "generation", "processor", "host_to_device")}
        self.prefill_tokens = 0
        self.decode_steps, self.decoded_tokens = 0, 0
        self._cuda = model.device.type == "cuda"
        self._pending: deque[tuple[str, object, object]] = deque()  # (stage, start, end) not yet added up
        self._open: tuple[str, object] | None = None
        self._lock = threading.Lock()  # `add` may be called from background threads
        visual, language = model.model.visual, model.model.language_model
        self._hooks = [
            visual.register_forward_pre_hook(partial(self._start, "vision_encoder"), with_kwargs=True),
            visual.register_forward_hook(self._stop, with_kwargs=True),
            language.register_forward_pre_hook(self._start_language, with_kwargs=True),
            language.register_forward_hook(self._stop, with_kwargs=True),
        ]

    @property
    def seconds(self) -> dict[str, float]:
        self._add_up(wait=True)
        return dict(self.totals)

    def remove(self):
        for hook in self._hooks:
            hook.remove()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.totals[name] += seconds

    def count_decode(self, steps: int, rows: int) -> None:
        """`steps` decode steps of `rows` rows each (the fast decoder's steps bypass the hooks)."""
        self.decode_steps += steps
        self.decoded_tokens += steps * rows

    @contextmanager
    def stage(self, name: str, on_gpu: bool = True):
        if not on_gpu:
            started = time.perf_counter()
            yield
            self.add(name, time.perf_counter() - started)
            return
        start = self._mark()
        yield
        self._pending.append((name, start, self._mark()))
        self._add_up(wait=False)

    def _mark(self):
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _add_up(self, wait: bool) -> None:
        """Add the finished stages to the totals (all of them, waiting for the GPU, when `wait`)."""
        while self._pending:
            name, start, end = self._pending[0]
            if not self._cuda:
                seconds = end - start
            elif wait or end.query():
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000
            else:
                break
            self.add(name, seconds)
            self._pending.popleft()

    def _start(self, stage, module, args, kwargs):
        self._open = (stage, self._mark())

    def _start_language(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")  # [B, T, D]
        batch, new_tokens = embeds.shape[:2]
        if new_tokens > 1:
            self.prefill_tokens += batch * new_tokens
        else:
            self.count_decode(1, batch)
        self._start("prefill" if new_tokens > 1 else "generation", module, args, kwargs)

    def _stop(self, module, args, kwargs, output):
        stage, start = self._open
        self._pending.append((stage, start, self._mark()))
        self._add_up(wait=False)
