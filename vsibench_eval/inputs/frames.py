"""Video frames for Qwen-VL models: decoding with decord, frame sampling, resizing, processor metadata.

smart_resize is transformers' copy of qwen-vl-utils' rule (the same arithmetic for frames of at least one
factor per side). The root qwen_vl_utils.py re-exports this module; the project does not use the PyPI package
`qwen-vl-utils`.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import InterpolationMode, resize
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize


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
    grid_thw: list[int] | None = None  # [t, h, w] in patches, set once the processor has made patches of the frames

    def frame_size(self) -> list[int]:
        """[H, W] in pixels, as the frames go to the processor."""
        return [int(self.frames.shape[1]), int(self.frames.shape[2])]

    def frame_spacing(self) -> float:
        """Mean seconds between consecutive sampled frames (one frame: one source frame's duration)."""
        if len(self.frame_indices) < 2:
            return 1.0 / self.avg_fps
        return (self.frame_indices[-1] - self.frame_indices[0]) / (len(self.frame_indices) - 1) / self.avg_fps

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


@dataclass(frozen=True)
class FrameRules:
    """How frames are counted, picked and sized beyond the count, fps cap and box; protocols.py says which
    reference uses which rule, docs/protocols.md cites where each comes from."""

    count: str = "exact"  # exact: as asked (capped at the video); even: rounded to even (qwen-vl-utils' nframes,
    # refused beyond the video); even_within_video: capped at the video, floored to even, at least 2 (lmms-eval)
    rounding: str = "floor"  # floor: np.linspace(...).astype(int); round: torch.linspace(...).round() (float32)
    resize: str = "fit"  # fit | spatial_r1 | smart_resize (resize_frames)
    min_pixels: int = 0  # smart_resize: fewest pixels per frame (0: 128 × factor²)
    max_pixels: int = 0  # smart_resize: most pixels per frame (0: no explicit limit)
    total_pixels: int = 0  # smart_resize: pixel budget of the whole video (0: none)


class FrameCountError(ValueError):
    """A frame rule that cannot be met by this video (e.g. more frames asked for than it has)."""


def frame_count(total_frames: int, avg_fps: float, num_frames: int, fps: float, rule: str = "exact") -> int:
    """How many frames to sample. With fps > 0 the count is first capped at int(whole seconds × fps), at least 1,
    as in Spatial-R1's script; `rule` then adjusts it (FrameRules.count)."""
    count = num_frames
    if fps > 0:
        whole_seconds = int(total_frames / avg_fps)
        count = max(1, min(num_frames, int(whole_seconds * fps)))
    if rule == "exact":
        return min(count, total_frames)
    if rule == "even_within_video":  # lmms-eval probes the video's length first
        count = max(2, min(count, total_frames) // 2 * 2)
    else:  # qwen-vl-utils rounds an explicit count to the nearest even number (Python's round: half to even)
        count = round(count / 2) * 2
    if not 2 <= count <= total_frames:
        raise FrameCountError(f"{count} frames asked for (frame rule {rule!r}) but the video has {total_frames}")
    return count


def sample_frame_indices(
    total_frames: int, avg_fps: float, num_frames: int, fps: float, count_rule: str = "exact", rounding: str = "floor"
) -> list[int]:
    """Indices spaced uniformly over the whole video, first and last frame included (frame_count frames)."""
    count = frame_count(total_frames, avg_fps, num_frames, fps, count_rule)
    if rounding == "round":  # as qwen-vl-utils: float32 positions, rounded half to even
        return torch.linspace(0, total_frames - 1, count).round().long().tolist()
    return np.linspace(0, total_frames - 1, count).astype(int).tolist()


def fit_resolution(height: int, width: int, target: tuple[int, int], factor: int) -> tuple[int, int]:
    """Size that fits inside `target` (height, width) keeping aspect, never upscaling, each side rounded to
    the nearest multiple of `factor` (the model's patch size × merge size), at least one factor."""
    scale = min(1.0, target[0] / height, target[1] / width)
    return (
        max(factor, round(height * scale / factor) * factor),
        max(factor, round(width * scale / factor) * factor),
    )


def spatial_r1_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) the original Spatial-R1 script resized a frame to, its defect included.

    It meant to cap the longer side at `longest` keeping aspect, but read PIL's (width, height) as (h, w) and
    passed (new_w, new_h) back to PIL as (width, height): width and height come out swapped, so a 640x480
    frame became 336 wide and 448 tall. Frames whose longer side is within `longest` were left as they were.
    """
    h, w = width, height  # what the script called h and w
    if max(h, w) <= longest:
        return height, width
    if h > w:
        new_h, new_w = longest, int(w * (longest / h))
    else:
        new_w, new_h = longest, int(h * (longest / w))
    return new_h, new_w  # PIL was given (new_w, new_h) as (width, height)


def frame_pixel_limits(rules: FrameRules, factor: int, num_frames: int) -> tuple[int, int]:
    """(min, max) pixels per frame for smart_resize, as qwen-vl-utils' fetch_video derives them: at most
    768 factor² per frame and 2 / num_frames of the video's budget, never below 1.05 × the minimum, and
    never above an explicit max_pixels."""
    min_pixels = rules.min_pixels or 128 * factor * factor
    per_frame = 768 * factor * factor
    if rules.total_pixels:
        per_frame = min(per_frame, rules.total_pixels / num_frames * 2)
    max_pixels = max(per_frame, int(min_pixels * 1.05))
    if rules.max_pixels:
        max_pixels = min(rules.max_pixels, max_pixels)
    return min_pixels, max_pixels


def resize_frames(frames: np.ndarray, target: tuple[int, int], factor: int, rules: FrameRules) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 resized by `rules.resize`, sides multiples of `factor`:

    - fit: inside `target` keeping aspect, never upscaled (Lanczos);
    - spatial_r1: the original script's swapped-size Lanczos resize (spatial_r1_size), then, as qwen-vl-utils
      0.0.10 did with a list of frames, smart_resize with its image limits (4 to 16384 factor²; PIL bicubic);
    - smart_resize: qwen-vl-utils' video sizing (frame_pixel_limits), which also upscales small frames
      (torchvision bicubic with antialias, as qwen-vl-utils).
    """
    height, width = frames.shape[1:3]
    if rules.resize == "fit":
        size = fit_resolution(height, width, target, factor)
        return np.stack([resize_frame(frame, *size) for frame in frames])
    if rules.resize == "spatial_r1":
        swapped = spatial_r1_size(height, width, max(target))
        size = smart_resize(*swapped, factor=factor, min_pixels=4 * factor * factor, max_pixels=16384 * factor**2)
        resized = [resize_frame(resize_frame(frame, *swapped), *size, Image.Resampling.BICUBIC) for frame in frames]
        return np.stack(resized)
    if rules.resize == "smart_resize":
        min_pixels, max_pixels = frame_pixel_limits(rules, factor, len(frames))
        size = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, 3, H, W]
        video = resize(video, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        return video.permute(0, 2, 3, 1).contiguous().numpy()
    raise ValueError(f"unknown resize rule {rules.resize!r}")


def load_video(
    path: str, num_frames: int, fps: float, target: tuple[int, int], factor: int, rules: FrameRules = FrameRules()
) -> VideoFrames:
    """Decode, sample and resize one video's frames. Raises VideoError naming the file on any failure."""
    if not os.path.exists(path):
        raise VideoError(f"{path}: video file not found")
    if not os.path.isfile(path):  # a directory, FIFO or device: decord would block on a FIFO or fail obscurely
        raise VideoError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: video file is empty")
    from decord import VideoReader, cpu  # imported here so that scoring and data code work without decord

    try:
        reader = VideoReader(path, ctx=cpu(0), num_threads=1)
        total_frames, avg_fps = len(reader), float(reader.get_avg_fps())
        if total_frames == 0 or avg_fps <= 0:
            raise VideoError(f"{path}: no decodable frames (frames={total_frames}, fps={avg_fps})")
        indices = sample_frame_indices(total_frames, avg_fps, num_frames, fps, rules.count, rules.rounding)
        decoded = reader.get_batch(indices).asnumpy()  # [T, H0, W0, 3]
    except VideoError:
        raise
    except FrameCountError as error:
        raise VideoError(f"{path}: {error}") from None
    except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
        raise VideoError(f"{path}: cannot decode video ({type(error).__name__}: {error})") from error

    try:
        frames = resize_frames(decoded, target, factor, rules)
    except Exception as error:  # e.g. smart_resize refuses an aspect ratio over 200
        height, width = decoded.shape[1:3]
        raise VideoError(
            f"{path}: cannot resize its {width}x{height} frames ({type(error).__name__}: {error})"
        ) from error
    return VideoFrames(
        frames=frames,
        frame_indices=indices,
        timestamps=[round(i / avg_fps, 3) for i in indices],
        duration=round(total_frames / avg_fps, 3),
        avg_fps=avg_fps,
        total_frames=total_frames,
    )


def resize_frame(frame: np.ndarray, height: int, width: int, resample=Image.Resampling.LANCZOS) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), resample))
