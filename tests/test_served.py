"""Served models (--backend openai) against a real server: `transformers serve` with the demo's trained tiny model
on CPU, started here on a free port. Every question answered, answers equal to the local engine's images path, the
key in no file, an outage that stops the run and a resume that finishes it; and the request parts themselves."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import read_results, run_eval
from PIL import Image

import eval_qwen
from vsibench_eval.demo.assets import ensure_demo
from vsibench_eval.errors import DataError
from vsibench_eval.inputs.frames import load_video
from vsibench_eval.model.generation import chat_text, processor_inputs
from vsibench_eval.model.served import (
    ServerSettings,
    ServerUnreachable,
    ask,
    chat_messages,
    image_part,
    make_client,
    video_part,
)
from vsibench_eval.running.prepare import served_model_family
from vsibench_eval.running.stopping import PAUSE_DIR
from vsibench_eval.settings.config import EvalConfig, check_backend

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-d0-not-store-7f3a"
# Small frames and answers keep a served run of the 40 demo questions to seconds on a CPU.
SMALL = ("--video_input", "images", "--protocol", "none", "--num_frames", "4", "--max_new_tokens", "6")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`transformers serve MODEL` on 127.0.0.1:port, float32 on the CPU, in its own process group."""

    def __init__(self, model: Path, log: Path):
        self.model, self.log, self.port, self.process = str(model), log, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300.0) -> None:
        command = [str(Path(sys.executable).with_name("transformers")), "serve", self.model, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--device", "cpu", "--dtype", "float32"]
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"transformers serve exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "transformers serve did not answer in time"
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory) -> Path:
    """The demo as `--demo` builds it: trained, so that answers are short ("A", "3"), as a server returns them
    (transformers serve strips and parses the text it returns)."""
    demo = tmp_path_factory.mktemp("served_demo")
    ensure_demo(demo, family="qwen2_5_vl")
    return demo


@pytest.fixture(scope="module")
def server(trained_demo, tmp_path_factory):
    served = Server(trained_demo / "model", tmp_path_factory.mktemp("server") / "serve.log")
    served.start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def served_run(trained_demo, server, tmp_path_factory):
    """A served run of the demo set, with the key in the environment."""
    out = tmp_path_factory.mktemp("served_runs")
    argv = ["--demo", "--demo_dir", str(trained_demo), "--output_dir_base", str(out), *SMALL]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", SECRET)
        status, run_dir = run_eval([*argv, "--backend", "openai", "--api_base", server.url])
    assert status == 0
    return run_dir


@pytest.mark.e2e
def test_served_run_answers_every_question_as_the_local_images_path(served_run, trained_demo, server, tmp_path):
    served = read_results(served_run)
    assert len(served) == 40 and all(r["error"] is None and r["prediction"] for r in served)
    assert {r["server_model"] for r in served} == {str(trained_demo / "model")}
    assert all(r["usage"]["prompt_tokens"] > 4 * 24 for r in served)  # 4 frames of 112x168: 24 tokens each
    for path in served_run.rglob("*"):
        assert path.is_dir() or SECRET.encode() not in path.read_bytes(), path
    summary = json.loads((served_run / "summary.json").read_text())
    assert summary["backend"] == "openai" and summary["server_model"] == [str(trained_demo / "model")]
    assert summary["settings"]["video_input"] == "images" and summary["settings"]["api"]["api_base"] == server.url
    log = (served_run / "vsibench_eval_default.log").read_text()
    assert "deviation: repetition_penalty 'checkpoint' not sent" in log

    argv = ["--demo", "--demo_dir", str(trained_demo), "--output_dir_base", str(tmp_path), *SMALL]
    status, local_run = run_eval(argv)  # the local engine, frames as separate images, float32 on the CPU
    assert status == 0
    local = read_results(local_run)
    assert [(r["id"], r["prediction"]) for r in served] == [(r["id"], r["prediction"]) for r in local]
    assert [(r["frame_indices"], r["frame_size"]) for r in served] == [
        (r["frame_indices"], r["frame_size"]) for r in local
    ]


@pytest.mark.e2e
def test_an_outage_stops_the_run_and_resume_finishes_it(served_run, trained_demo, server, tmp_path):
    run_dir, pause = tmp_path / "run", tmp_path / "pause"
    pause.mkdir()
    argv = ["--demo", "--demo_dir", str(trained_demo), "--run_dir", str(run_dir), *SMALL, "--batch_size", "2"]
    argv += ["--backend", "openai", "--api_base", server.url, "--api_concurrency", "1", "--api_retries", "1"]
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "eval_qwen.py", *argv],
            cwd=ROOT,
            env=os.environ | {PAUSE_DIR: str(pause)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not (pause / "flushed_0").exists():  # the worker wrote its first batch and waits
                assert process.poll() is None and time.monotonic() < deadline, Path(stderr.name).read_text()[-3000:]
                time.sleep(0.1)
            server.stop()
            (pause / "go").touch()
            status = process.wait(300)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        output = Path(stderr.name).read_text()
    assert status == 1
    assert "server could not be reached" in output and f"python eval_qwen.py --resume {run_dir}" in output
    kept = read_results(run_dir)
    assert 2 <= len(kept) < 40 and all(r["error"] is None for r in kept)  # no question scored as failed

    server.start()
    assert eval_qwen.main(EvalConfig(), ["--resume", str(run_dir)]) == 0
    ids = [json.loads(line)["id"] for path in (run_dir / "shards").glob("shard_*.jsonl") for line in path.open()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 40  # nothing answered twice
    assert [r["prediction"] for r in read_results(run_dir)] == [r["prediction"] for r in read_results(served_run)]


@pytest.mark.e2e
def test_a_request_the_server_rejects_is_that_questions_failure(server):
    settings = ServerSettings(server.url, "nobody/none", "OPENAI_API_KEY", 1, 30, 0, "images")
    frame = np.zeros((56, 56, 3), dtype=np.uint8)
    answer, error, provenance = ask(
        make_client(settings), "nobody/none", chat_messages([image_part(frame)], "?", "none"), 4
    )
    assert answer == "" and provenance == {}
    assert error.startswith("server rejected the request: 400") and "nobody/none" in error


def test_an_unreachable_server_raises_after_the_retries():
    settings = ServerSettings(f"http://127.0.0.1:{free_port()}/v1", "m", "OPENAI_API_KEY", 1, 5, 1, "images")
    with pytest.raises(ServerUnreachable, match="APIConnectionError"):
        ask(make_client(settings), "m", chat_messages([], "?", "none"), 4)


def test_frames_go_as_lossless_images_in_order_then_the_prompt():
    frames = np.random.default_rng(0).integers(0, 256, (3, 28, 56, 3), dtype=np.uint8)
    messages = chat_messages([image_part(frame) for frame in frames], "How many?", "Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."}
    parts = messages[1]["content"]
    assert [part["type"] for part in parts] == ["image_url"] * 3 + ["text"] and parts[-1]["text"] == "How many?"
    for part, frame in zip(parts, frames, strict=False):
        data = base64.b64decode(part["image_url"]["url"].removeprefix("data:image/png;base64,"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), frame)
    assert chat_messages([], "q", "none")[0]["role"] == "user"  # "none": no system message


def test_frames_go_as_one_short_mp4_of_the_sampled_frames(demo_dirs, tmp_path):
    demo = demo_dirs("qwen2_5_vl")
    video = load_video(str(demo / "vsibench" / "scannet" / "scene0011_00.mp4"), 6, 0.0, (448, 448), 28)
    url = video_part(video)["video_url"]["url"]
    (tmp_path / "sent.mp4").write_bytes(base64.b64decode(url.removeprefix("data:video/mp4;base64,")))
    sent = load_video(str(tmp_path / "sent.mp4"), 100, 0.0, (10_000, 10_000), 28)
    assert sent.frame_indices == list(range(6)) and sent.frame_size() == video.frame_size()
    assert np.abs(sent.frames.astype(int) - video.frames.astype(int)).mean() < 8  # H.264 yuv420p, near lossless


def test_local_images_path_gives_the_processor_one_image_per_frame(demo_dirs):
    from transformers import AutoProcessor

    demo = demo_dirs("qwen2_5_vl")
    processor = AutoProcessor.from_pretrained(demo / "model")
    video = load_video(str(demo / "vsibench" / "scannet" / "scene0011_00.mp4"), 3, 0.0, (448, 448), 28)
    text = chat_text(processor, "How many?", "none", images=3)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 3 and "<|video_pad|>" not in text
    inputs = processor_inputs(processor, video, [text], "2.0", "images")
    height, width = (side // 14 for side in video.frame_size())
    assert inputs["image_grid_thw"].tolist() == [[1, height, width]] * 3 and "pixel_values_videos" not in inputs


def test_served_settings_are_checked():
    with pytest.raises(DataError, match="api_base"):
        check_backend(EvalConfig(backend="openai"))
    with pytest.raises(DataError, match="api_timeout"):
        check_backend(EvalConfig(backend="openai", api_base="http://127.0.0.1:1/v1", api_timeout=0))
    with pytest.raises(DataError, match="served_model_type: needed for served model 'gpt-4o'"):
        served_model_family(EvalConfig(backend="openai", model_name="gpt-4o"))
    config = EvalConfig(backend="openai", model_name="gpt-4o", served_model_type="qwen2_5_vl")
    assert served_model_family(config) == "qwen2_5_vl" and config.model_name == "gpt-4o"
