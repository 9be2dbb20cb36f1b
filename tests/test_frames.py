"""Frame sampling, resizing and decoding of real mp4 files with decord."""

import numpy as np
import pytest

from qwen_vl_utils import VideoError, fit_resolution, load_video, sample_frame_indices


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


def test_undecodable_video_names_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(VideoError, match="junk.mp4: cannot decode"):
        load_video(str(junk), 8, 1.0, (448, 448), 28)


def test_decodes_a_real_mp4_into_resized_frames_with_their_times(demo_dirs):
    video_path = demo_dirs("qwen2_5_vl") / "vsibench" / "arkitscenes" / "41069025.mp4"  # 36 s, 10 fps, 160x120
    video = load_video(str(video_path), 32, 1.0, (448, 448), 28)
    assert video.frames.shape == (32, 112, 168, 3) and video.frames.dtype == np.uint8
    assert video.total_frames == 360 and video.avg_fps == pytest.approx(10.0) and video.duration == 36.0
    assert video.frame_indices == sample_frame_indices(360, 10.0, 32, 1.0)
    assert video.timestamps == [round(i / 10.0, 3) for i in video.frame_indices]
    assert video.metadata()["frames_indices"] == video.frame_indices
    assert video.frames[0].std() > 0 and not np.array_equal(video.frames[0], video.frames[-1])
