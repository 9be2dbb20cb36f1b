"""A few seconds of training for the demo checkpoint, so that the demo's table shows the scoring at work.

The demo set's answers are random draws (data.py), unrelated to its videos, so all a model can learn is the
answer format (an option letter, a number) and the spread of each question type's answers. The tiny model
learns that here, from questions and videos of its own drawn by the same generator with another seed (never the
demo's evaluated ones), in the prompts the evaluator sends (both prompt formats, with and without a system
message); the loss covers only the answer and the end-of-turn token. Text layers train; the vision tower
stays as built. One CPU thread, a fixed seed: the same weights on every build.

It uses the evaluator's own model loading, chat text, processor call and prompts, so it trains on exactly what
the evaluator sends.
"""

import time

import numpy as np
import torch

from vsibench_eval.demo.data import DEMO_FPS, render_frames, scene_questions
from vsibench_eval.inputs.frames import VideoFrames, fit_resolution, resize_frame
from vsibench_eval.inputs.prompts import build_prompt
from vsibench_eval.model.generation import chat_text, load_model, processor_inputs

# How the demo checkpoint is trained; ensure_demo records it, and a build made another way is rebuilt.
RECIPE = {
    "seed": 1,  # the demo set is drawn with seed 0: these questions and videos are others
    "steps": 100,  # AdamW steps of one training video and its ten questions
    "learning_rate": 1e-2,  # falls linearly to zero
    "init_std": 0.02,  # the weights' spread before training (the untrained test checkpoints use tiny_models.INIT_STD)
    "frame_pairs": [1, 2],  # 2 or 4 frames per training video
    "frame_box": 56,  # frames fit in 56 x 56: a handful of video tokens, so a step is cheap
}
# The prompts the evaluator sends under its protocols, (prompt_format, system_prompt), taken in turn.
PROMPT_STYLES = (("vsibench", "none"), ("spatial_r1", "none"), ("vsibench", "You are a helpful assistant."))
IGNORE = -100  # the label of a position outside the loss


def training_video(rng, factor: int) -> VideoFrames:
    """A short clip of bouncing boxes like the demo's, one frame a second, few and small frames."""
    num_frames = 2 * int(rng.choice(RECIPE["frame_pairs"]))
    height, width = fit_resolution(120, 160, (RECIPE["frame_box"],) * 2, factor)
    frames = np.stack([resize_frame(frame, height, width) for frame in render_frames(160, 120, num_frames, rng)])
    indices = [DEMO_FPS * i for i in range(num_frames)]
    return VideoFrames(
        frames=frames,
        frame_indices=indices,
        timestamps=[i / DEMO_FPS for i in indices],
        duration=float(num_frames),
        avg_fps=float(DEMO_FPS),
        total_frames=DEMO_FPS * num_frames,
    )


def training_batch(processor, rng, factor: int, step: int) -> tuple[dict, torch.Tensor]:
    """One video and ten fresh questions about it, each answered, in this step's prompt style.

    Returns the processor's inputs (rows left-padded, so each row ends with its answer and end-of-turn token)
    and labels [rows, width] for the last `width` tokens: the answer tokens, IGNORE elsewhere.
    """
    prompt_format, system_prompt = PROMPT_STYLES[step % len(PROMPT_STYLES)]
    video = training_video(rng, factor)
    texts, answer_lengths = [], []
    for question_type, question, ground_truth, options in scene_questions(rng):
        record = {"question_type": question_type, "question": question, "options": options}
        answer = ground_truth + "<|im_end|>"
        prompt = build_prompt(record, "default", prompt_format=prompt_format)
        texts.append(chat_text(processor, prompt, system_prompt) + answer)
        answer_lengths.append(len(processor.tokenizer(answer)["input_ids"]))
    inputs = processor_inputs(processor, video, texts, "metadata")
    width = max(answer_lengths)
    labels = inputs["input_ids"][:, -width:].clone()
    for row, length in enumerate(answer_lengths):
        labels[row, : width - length] = IGNORE
    return inputs, labels


def answer_loss(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the answer tokens, from the logits of the last positions only (the lm head over whole
    prompts would cost more than the rest of a step)."""
    width = labels.shape[1]
    logits = model(**inputs, logits_to_keep=width + 1).logits[:, :-1]  # [rows, width, vocab]: each predicts the next
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def train(model, processor, steps: int) -> list[float]:
    """Train the text model with AdamW on RECIPE's data; returns each step's loss."""
    vision = model.config.vision_config
    factor = vision.patch_size * vision.spatial_merge_size
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".visual." not in f".{name}")
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=RECIPE["learning_rate"], weight_decay=0.0
    )
    # The rate falls linearly to zero, so the last batches' random answers move the weights little.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    rng = np.random.default_rng(RECIPE["seed"])
    threads = torch.get_num_threads()
    # One thread: these tensors are too small to gain from more, and a fixed order of sums keeps builds equal.
    torch.set_num_threads(1)
    losses = []
    try:
        model.train()
        for step in range(steps):
            loss = answer_loss(model, *training_batch(processor, rng, factor, step))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return losses


def train_checkpoint(path, steps: int = RECIPE["steps"]) -> dict:
    """Train the checkpoint saved at `path` and save it back; returns each step's loss and the seconds taken."""
    started = time.perf_counter()
    model, processor, _ = load_model(str(path), "cpu", mrope_positions="transformers")  # float32, left padding
    with torch.random.fork_rng(devices=[]):  # dropout-free, but any random draw is seeded and the caller's kept
        torch.manual_seed(RECIPE["seed"])
        losses = train(model, processor, steps)
    model.save_pretrained(path)
    return {"losses": [round(loss, 4) for loss in losses], "seconds": round(time.perf_counter() - started, 1)}
