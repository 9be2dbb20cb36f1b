"""Frame sampling, resizing and decoding of real mp4 files with decord."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsibench_eval.demo.data import write_video
from vsibench_eval.inputs.frames import (
    FrameRules,
    VideoError,
    VideoFrames,
    fit_resolution,
    frame_count,
    frame_pixel_limits,
    load_video,
    resize_frame,
    resize_frames,
    sample_frame_indices,
    spatial_r1_size,
)


def test_uniform_over_whole_video_first_and_last_included():
    indices = sample_frame_indices(total_frames=3000, avg_fps=30.0, num_frames=32, fps=0)
    assert len(indices) == 32 and indices[0] == 0 and indices[-1] == 2999
    gaps = np.diff(indices)
    assert gaps.min() >= 96 and gaps.max() <= 97  # 2999 / 31 = 96.7


def test_fps_caps_count_at_whole_seconds():
    # 20.9 s at 10 fps: int(20.9) * 1 = 20 frames, not 32
    assert len(sample_frame_indices(209, 10.0, 32, fps=1.0)) == 20
    assert len(sample_frame_indices(209, 10.0, 32, fps=0.5)) == 10
    assert len(sample_frame_indices(1000, 10.0, 32, fps=1.0)) == 32  # long video: num_frames wins
    assert len(sample_frame_indices(5, 10.0, 32, fps=1.0)) == 1  # under a second: at least one


# Expected indices written out by hand: floor(i × (total − 1) / (count − 1)) for i = 0 .. count − 1, where count
# is num_frames capped at int(whole seconds × fps) (Spatial-R1's rule), and whole seconds = int(total / avg_fps).
@pytest.mark.parametrize(
    "total, avg_fps, num_frames, fps, expected",
    [
        # no cap: 99 / 7 = 14.14 apart; truncated, not rounded (56.57 -> 56, 70.71 -> 70, 84.86 -> 84)
        (100, 10.0, 8, 0, [0, 14, 28, 42, 56, 70, 84, 99]),
        # 20.9 s at fps 1: capped at 20 frames, 208 / 19 = 10.95 apart
        (209, 10.0, 32, 1.0, [0, 10, 21, 32, 43, 54, 65, 76, 87, 98, 109, 120, 131, 142, 153, 164, 175, 186, 197, 208]),
        # the same video at fps 0.5: int(20 × 0.5) = 10 frames, 208 / 9 = 23.11 apart
        (209, 10.0, 32, 0.5, [0, 23, 46, 69, 92, 115, 138, 161, 184, 208]),
        # 95 frames at 29.97 fps = 3.17 s: 3 whole seconds, 3 frames
        (95, 29.97, 32, 1.0, [0, 47, 94]),
        # 7 whole seconds × fps 0.3 = 2.1: 2 frames, the first and the last
        (75, 10.0, 32, 0.3, [0, 74]),
        # a long video: num_frames wins over the cap (100 s × 1 fps); 999 / 4 = 249.75 apart
        (1000, 10.0, 5, 1.0, [0, 249, 499, 749, 999]),
        # under a second: the cap would be 0, one frame is kept
        (5, 10.0, 32, 1.0, [0]),
    ],
)
def test_frame_indices_computed_by_hand(total, avg_fps, num_frames, fps, expected):
    assert sample_frame_indices(total, avg_fps, num_frames, fps) == expected


def test_never_more_frames_than_the_video_has():
    assert sample_frame_indices(5, 10.0, 32, fps=0) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "size, target, factor, expected",
    [
        ((480, 640), (448, 448), 28, (336, 448)),  # downscale to fit, aspect kept
        ((120, 160), (448, 448), 28, (112, 168)),  # never upscaled, only rounded to the factor
        ((1440, 1920), (448, 448), 32, (320, 448)),  # Qwen3-VL factor; 336 / 32 = 10.5 rounds to even
        ((10, 10), (448, 448), 28, (28, 28)),  # at least one factor
        ((480, 640), (224, 448), 28, (224, 308)),  # the box's height binds
    ],
)
def test_fit_resolution(size, target, factor, expected):
    assert fit_resolution(*size, target, factor) == expected


def test_missing_and_empty_videos_name_the_file(tmp_path):
    with pytest.raises(VideoError, match="nothere.mp4: video file not found"):
        load_video(str(tmp_path / "nothere.mp4"), 8, 1.0, (448, 448), 28)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4: video file is empty"):
        load_video(str(empty), 8, 1.0, (448, 448), 28)


def test_a_fifo_directory_or_device_is_not_a_regular_file(tmp_path):
    fifo, folder = tmp_path / "fifo.mp4", tmp_path / "folder.mp4"
    os.mkfifo(fifo)  # decord would wait on it forever
    folder.mkdir()
    for path in (fifo, folder, Path("/dev/null")):
        with pytest.raises(VideoError, match=f"^{path}: not a regular file$"):
            load_video(str(path), 8, 1.0, (448, 448), 28)


def test_undecodable_video_names_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(VideoError, match=r"junk.mp4: cannot decode video \(RuntimeError: Error reading "):
        load_video(str(junk), 8, 1.0, (448, 448), 28)


def test_decodes_a_real_mp4_into_resized_frames_with_their_times(demo_dirs):
    video_path = demo_dirs("qwen2_5_vl") / "vsibench" / "arkitscenes" / "41069025.mp4"  # 36 s, 10 fps, 160x120
    video = load_video(str(video_path), 32, 1.0, (448, 448), 28)
    assert video.frames.shape == (32, 112, 168, 3) and video.frames.dtype == np.uint8
    assert video.total_frames == 360 and video.avg_fps == pytest.approx(10.0) and video.duration == 36.0
    # 36 s at fps 1 caps nothing: 32 frames, 359 / 31 = 11.58 apart, truncated
    assert video.frame_indices == [int(i * 359 / 31) for i in range(32)]
    assert video.frame_indices[:6] == [0, 11, 23, 34, 46, 57] and video.frame_indices[-1] == 359
    assert video.timestamps == [round(i / 10.0, 3) for i in video.frame_indices]
    assert video.metadata()["frames_indices"] == video.frame_indices
    assert video.frames[0].std() > 0 and not np.array_equal(video.frames[0], video.frames[-1])


@pytest.mark.parametrize(
    "indices, avg_fps, seconds",
    [
        ([10, 20, 40], 10.0, 1.5),  # (40 - 10) / 2 gaps / 10 fps
        ([0, 30], 10.0, 3.0),
        ([5], 4.0, 0.25),  # one frame: one source frame's duration
    ],
)
def test_frame_spacing(indices, avg_fps, seconds):
    frames = np.zeros((len(indices), 28, 28, 3), dtype=np.uint8)
    video = VideoFrames(frames, indices, [i / avg_fps for i in indices], 10.0, avg_fps, 100)
    assert video.frame_spacing() == pytest.approx(seconds)


def test_metadata_of_sampled_frames():
    frames = np.zeros((2, 28, 56, 3), dtype=np.uint8)  # [T, H, W, 3]
    video = VideoFrames(frames, [0, 9], [0.0, 0.9], 1.0, 10.0, 10)
    assert video.metadata() == {
        "total_num_frames": 10,
        "fps": 10.0,
        "frames_indices": [0, 9],
        "duration": 1.0,
        "height": 28,
        "width": 56,
    }


def test_frames_are_resized_with_lanczos():
    frame = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    resized = resize_frame(frame, 28, 42)
    assert resized.shape == (28, 42, 3)
    lanczos = np.asarray(Image.fromarray(frame).resize((42, 28), Image.Resampling.LANCZOS))
    bicubic = np.asarray(Image.fromarray(frame).resize((42, 28), Image.Resampling.BICUBIC))
    assert np.array_equal(resized, lanczos) and not np.array_equal(resized, bicubic)
    assert resize_frame(frame, 60, 80) is frame  # already the right size: untouched


def test_short_and_slow_videos_decode_with_their_times(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 56, 56, 3), dtype=np.uint8)
    write_video(tmp_path / "one.mp4", frames[:1], fps=1)  # a single frame at 1 fps
    video = load_video(str(tmp_path / "one.mp4"), 8, 0, (448, 448), 28)
    assert (video.total_frames, video.avg_fps, video.frame_indices, video.duration) == (1, 1.0, [0], 1.0)
    write_video(tmp_path / "three.mp4", frames, fps=3)  # 4 frames at 3 fps: times rounded to milliseconds
    video = load_video(str(tmp_path / "three.mp4"), 8, 0, (448, 448), 28)
    assert video.timestamps == [0.0, 0.333, 0.667, 1.0] and video.duration == 1.333


@pytest.mark.parametrize(
    "rules, factor, num_frames, expected",
    [
        # defaults: 128 x 28² = 100,352 at least, 768 x 28² = 602,112 at most
        (FrameRules(), 28, 32, (100_352, 602_112)),
        (FrameRules(), 32, 32, (131_072, 786_432)),  # Qwen3-VL's factor
        # the video's budget binds: 3,200,000 / 32 x 2 = 200,000 per frame
        (FrameRules(total_pixels=3_200_000), 28, 32, (100_352, 200_000)),
        # the budget is below the floor: 1.05 x 100,352 = 105,369.6, truncated
        (FrameRules(total_pixels=1_280_000), 28, 32, (100_352, 105_369)),
        # lmms-eval's values for Qwen2.5-VL: the budget (5,644,800 per frame) does not bind
        (FrameRules(min_pixels=200_704, max_pixels=1_605_632, total_pixels=90_316_800), 28, 32, (200_704, 602_112)),
        (FrameRules(max_pixels=500_000), 28, 32, (100_352, 500_000)),  # an explicit maximum below 768 x 28²
    ],
)
def test_smart_resize_pixel_limits_by_hand(rules, factor, num_frames, expected):
    assert frame_pixel_limits(rules, factor, num_frames) == expected


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (480, 640, (448, 336)),  # the defect: a 640x480 frame comes out 336 wide and 448 tall
        (1440, 1920, (448, 336)),
        (640, 480, (336, 448)),  # portrait: swapped the other way
        (336, 448, (336, 448)),  # longer side already 448: left as it was
        (300, 400, (300, 400)),
        (1000, 1000, (448, 448)),
    ],
)
def test_spatial_r1_size_by_hand(height, width, expected):
    assert spatial_r1_size(height, width, 448) == expected


def test_spatial_r1_upscales_a_frame_below_the_image_minimum():
    # 28x28 is not resized by the original script (longer side within 448); qwen-vl-utils' image minimum of
    # 4 x 28² = 3,136 pixels then scales both sides by sqrt(3136 / 784) = 2.
    frames = np.zeros((1, 28, 28, 3), dtype=np.uint8)
    assert resize_frames(frames, (448, 448), 28, FrameRules(resize="spatial_r1")).shape == (1, 56, 56, 3)


@pytest.mark.parametrize(
    "total_frames, num_frames, rule, expected",
    [
        (100, 7, "exact", 7),  # an odd count is kept as asked
        (3, 32, "even_within_video", 2),  # capped at the video's 3 frames, floored to even
        (4, 4, "even", 4),  # every frame of the video
        (100, 7, "even", 8),  # round(3.5) = 4 pairs
    ],
)
def test_frame_count_rules_by_hand(total_frames, num_frames, rule, expected):
    assert frame_count(total_frames, 10.0, num_frames, 0, rule) == expected


def test_frame_count_is_exact_by_default():
    assert frame_count(100, 10.0, 7, 0) == 7


def test_smart_resize_upscales_a_small_frame_to_the_video_minimum():
    # 56x56 = 3,136 pixels, below 128 x 28² = 100,352: both sides scale by sqrt(32) = 5.66 and round up to
    # ceil(56 x 5.66 / 28) x 28 = 336.
    frames = np.zeros((1, 56, 56, 3), dtype=np.uint8)
    assert resize_frames(frames, (448, 448), 28, FrameRules(resize="smart_resize")).shape == (1, 336, 336, 3)


def test_smart_resize_downscales_with_torchvision_antialiased_bicubic():
    # 1120x1120 = 1,254,400 pixels, above 768 x 28² = 602,112: both sides shrink by sqrt(1254400 / 602112)
    # = 1.443 and round down to floor(1120 / 1.443 / 28) x 28 = 756. The pixels are qwen-vl-utils' own step,
    # torchvision's bicubic resize with antialias, which differs from bilinear and from no antialias.
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    frames = np.random.default_rng(0).integers(0, 256, size=(1, 1120, 1120, 3), dtype=np.uint8)
    resized = resize_frames(frames, (448, 448), 28, FrameRules(resize="smart_resize"))
    assert resized.shape == (1, 756, 756, 3)

    def torchvision_resize(interpolation, antialias):
        video = resize(torch.from_numpy(frames).permute(0, 3, 1, 2), [756, 756], interpolation, antialias=antialias)
        return video.permute(0, 2, 3, 1).numpy()

    assert np.array_equal(resized, torchvision_resize(InterpolationMode.BICUBIC, True))
    assert not np.array_equal(resized, torchvision_resize(InterpolationMode.BICUBIC, False))
    assert not np.array_equal(resized, torchvision_resize(InterpolationMode.BILINEAR, True))
