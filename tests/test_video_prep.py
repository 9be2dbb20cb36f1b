"""The preparation pool (video_prep.py): sized to the worker's share of the cores, one torch thread per pool
thread, and the model's wait for a video's frames measured."""

import time

import pytest
import torch

from vsibench_eval.inputs.questions import group_by_video, load_questions
from vsibench_eval.running import video_prep
from vsibench_eval.settings.protocols import apply_protocol


@pytest.mark.parametrize(
    ("device", "cores", "processes", "threads"),
    [
        ("cuda:0", 16, 1, 14),  # one GPU worker: every core but two
        ("cuda:0", 16, 4, 2),  # four workers share the cores
        ("cuda:3", 16, 8, 1),  # at least one
        ("cpu", 16, 1, 1),  # on the CPU the model needs the cores
    ],
)
def test_pool_is_the_workers_share_of_the_cores_less_two(device, cores, processes, threads, monkeypatch):
    monkeypatch.setattr(video_prep.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    config = video_prep.EvalConfig(num_processes=processes)
    assert video_prep.video_threads(device, config) == threads


def test_pool_threads_use_one_torch_thread_and_the_wait_is_measured(demo_dirs):
    demo = demo_dirs("qwen2_5_vl")
    questions = load_questions(str(demo / "vsibench" / "test.parquet"), str(demo / "vsibench"))
    paths = list(group_by_video(questions))[:3]
    config = video_prep.EvalConfig(num_frames=8, fps=1.0, target_resolution=[224, 224], prompt_type="official")
    apply_protocol(config, "qwen2_5_vl")
    torch_threads = {}

    def prepare(path, video):  # in a pool thread
        torch_threads[path] = torch.get_num_threads()
        if path == paths[0]:
            time.sleep(0.3)  # the first video is slow: the model has to wait for it
        return path

    main_threads = torch.get_num_threads()
    decoded = list(video_prep.decoded_videos(paths, config, 28, prepare, threads=2))
    assert [d.path for d in decoded] == [d.prefix for d in decoded] == paths
    assert torch_threads == dict.fromkeys(paths, 1)
    assert torch.get_num_threads() == main_threads  # the model's thread keeps its own
    assert decoded[0].waited >= 0.25 and all(d.waited >= 0 for d in decoded)
