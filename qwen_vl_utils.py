"""Video input for Qwen-VL models: decoding with decord, frame sampling, resizing, processor metadata.

This module shadows the PyPI package `qwen-vl-utils`; the project does not use that package.
"""

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image


class VideoError(RuntimeError):
    """A video that is missing or cannot be decoded; the message names the file."""


@dataclass
class VideoFrames:
    frames: np.ndarray  # [T, H, W, 3] uint8, H and W multiples of the model's patch factor
    frame_indices: list[int]  # indices into the decoded stream
    timestamps: list[float]  # seconds, frame_index / avg_fps
    duration: float  # seconds, total_frames / avg_fps
    avg_fps: float
    total_frames: int

    def metadata(self) -> dict:
        """What transformers' video processors need when frames are already sampled."""
        return {
            "total_num_frames": self.total_frames,
            "fps": self.avg_fps,
            "frames_indices": self.frame_indices,
            "duration": self.duration,
            "height": int(self.frames.shape[1]),
            "width": int(self.frames.shape[2]),
        }


def sample_frame_indices(total_frames: int, avg_fps: float, num_frames: int, fps: float) -> list[int]:
    """`num_frames` indices spaced uniformly over the whole video, first and last frame included.

    With fps > 0 the count is capped at int(whole seconds × fps), at least 1, as in Spatial-R1's script.
    """
    count = num_frames
    if fps > 0:
        whole_seconds = int(total_frames / avg_fps)
        count = max(1, min(num_frames, int(whole_seconds * fps)))
    count = min(count, total_frames)
    return np.linspace(0, total_frames - 1, count).astype(int).tolist()


def fit_resolution(height: int, width: int, target: tuple[int, int], factor: int) -> tuple[int, int]:
    """Size that fits inside `target` (height, width) keeping aspect, never upscaling, each side rounded to
    the nearest multiple of `factor` (the model's patch size × merge size), at least one factor."""
    scale = min(1.0, target[0] / height, target[1] / width)
    return (
        max(factor, round(height * scale / factor) * factor),
        max(factor, round(width * scale / factor) * factor),
    )


def load_video(path: str, num_frames: int, fps: float, target: tuple[int, int], factor: int) -> VideoFrames:
    """Decode, sample and resize one video's frames. Raises VideoError naming the file on any failure."""
    if not os.path.isfile(path):
        raise VideoError(f"{path}: video file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: video file is empty")
    from decord import VideoReader, cpu  # imported here so that scoring and data code work without decord

    try:
        reader = VideoReader(path, ctx=cpu(0), num_threads=1)
        total_frames, avg_fps = len(reader), float(reader.get_avg_fps())
        if total_frames == 0 or avg_fps <= 0:
            raise VideoError(f"{path}: no decodable frames (frames={total_frames}, fps={avg_fps})")
        indices = sample_frame_indices(total_frames, avg_fps, num_frames, fps)
        decoded = reader.get_batch(indices).asnumpy()  # [T, H0, W0, 3]
    except VideoError:
        raise
    except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
        raise VideoError(f"{path}: cannot decode video ({type(error).__name__}: {error})") from error

    height, width = fit_resolution(decoded.shape[1], decoded.shape[2], target, factor)
    frames = np.stack([resize_frame(frame, height, width) for frame in decoded])
    return VideoFrames(
        frames=frames,
        frame_indices=indices,
        timestamps=[round(i / avg_fps, 3) for i in indices],
        duration=round(total_frames / avg_fps, 3),
        avg_fps=avg_fps,
        total_frames=total_frames,
    )


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS))
