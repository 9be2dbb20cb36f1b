"""A model behind an OpenAI-compatible server (vLLM, SGLang, transformers serve, a hosted API): the requests that
carry a video's sampled frames and one question, sent concurrently, and the replies read back.

What is sent is the protocol's input: the frames inputs/frames.py sampled and resized, as one PNG image part per
frame in order (video_input "images") or encoded as one short mp4 (video_input "video"), then the prompt text.
The openai client retries connection errors, timeouts, 429 and 5xx with exponential backoff, and honours
Retry-After. When the server is still unreachable after the retries, ServerUnreachable stops the run (an outage
is not a score); a request the server rejects (e.g. 400, context too long) is that question's failure.

Imports: openai (when a client is made), PIL and PyAV (when a request is built), inputs/.
"""

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from vsibench_eval.inputs.frames import VideoFrames

# Settings of a run that a chat-completions request cannot carry: the server decides them. The log names each
# one as a deviation from the run's protocol.
SERVER_DECIDES = {
    "repetition_penalty": "the server's own (its default, or the checkpoint's generation_config.json)",
    "eos_tokens": "the server's stop tokens",
    "mrope_positions": "the server's own position code",
    "position_fps": "the server's own time code (video input)",
}


NO_KEY = "none"  # what is sent when the key's variable is unset (a local server takes any)


class ServerUnreachable(RuntimeError):
    """The server could not be reached (or kept failing: 429, 5xx, timeouts) after the retries, or refused the key."""


@dataclass(frozen=True)
class ServerSettings:
    api_base: str  # the server's /v1 URL
    model: str  # the model id the server serves
    api_key_env: str  # the environment variable holding the key (the key itself is never stored)
    concurrency: int  # requests in flight at once
    timeout: float  # seconds per request
    retries: int  # retries of a request that failed to connect, timed out, or got 429 / 5xx
    video_input: str  # images | video


def make_client(settings: ServerSettings):
    """An openai client for the server. A local server needs no key: a placeholder is sent then."""
    import openai

    return openai.OpenAI(
        base_url=settings.api_base,
        api_key=os.environ.get(settings.api_key_env) or NO_KEY,
        timeout=settings.timeout,
        max_retries=settings.retries,
    )


def image_part(frame: np.ndarray) -> dict:
    """One frame [H, W, 3] uint8 as a base64 PNG data URL (lossless: the server sees these exact pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(video: VideoFrames) -> dict:
    """The sampled frames as one mp4 (H.264, yuv420p, one frame per sampled frame, at the sampled frames' mean
    rate), as a base64 data URL for servers that take video_url."""
    import av

    buffer = io.BytesIO()
    rate = max(1, round(1 / video.frame_spacing()))
    height, width = video.frame_size()
    with av.open(buffer, "w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=rate, options={"threads": "1", "crf": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in video.frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    url = "data:video/mp4;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"type": "video_url", "video_url": {"url": url}}


def vision_parts(video: VideoFrames, video_input: str) -> list[dict]:
    """The video as the request's parts: one image part per frame, in order, or one video part."""
    if video_input == "images":
        return [image_part(frame) for frame in video.frames]
    return [video_part(video)]


def chat_messages(vision: list[dict], prompt: str, system_prompt: str) -> list[dict]:
    """The request's messages: a system message unless `system_prompt` is "none", then the user turn with the
    video first and the prompt after it (the benchmark's order)."""
    messages = [{"role": "user", "content": [*vision, {"type": "text", "text": prompt}]}]
    if system_prompt != "none":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def ask(client, model: str, messages: list[dict], max_new_tokens: int) -> tuple[str, str | None, dict]:
    """(answer, error, provenance) of one greedy request; a request the server rejects gives its message as the
    error. Raises ServerUnreachable when the retries are spent on connection errors, timeouts, 429 or 5xx."""
    import openai

    try:
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_new_tokens)
    except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
        raise ServerUnreachable(f"{type(error).__name__}: {error}") from None
    except openai.APIStatusError as error:
        said = server_message(error)
        if client.api_key != NO_KEY:  # some servers quote the key they refused
            said = said.replace(client.api_key, "<key>")
        if error.status_code >= 500 or error.status_code in (401, 403):  # down, or no question would pass
            raise ServerUnreachable(f"{error.status_code} {said}") from None
        return "", f"server rejected the request: {error.status_code} {said}", {}
    choice = reply.choices[0] if reply.choices else None
    text = (choice.message.content or "") if choice else ""
    usage = reply.usage.model_dump(exclude_none=True) if reply.usage else None
    return text, None, {"server_model": reply.model, "usage": usage, "finish_reason": choice and choice.finish_reason}


def server_message(error) -> str:
    """What the server said about a rejected request: OpenAI's {"error": {"message"}} or FastAPI's {"detail"}."""
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error")
    said = inner.get("message") if isinstance(inner, dict) else inner or body.get("detail")
    return str(said) if said else error.message


class ServedAnswerer:
    """The worker's answerer for a served model: given a video's frames, a function answering a batch of its
    prompts through the server, `settings.concurrency` requests at a time, each answer (prediction, error,
    provenance). Collects the model names the server reported."""

    def __init__(self, client, settings: ServerSettings, system_prompt: str, max_new_tokens: int):
        self.client, self.settings = client, settings
        self.system_prompt, self.max_new_tokens = system_prompt, max_new_tokens
        self.server_models: set[str] = set()

    def __call__(self, video: VideoFrames | None, video_error: str | None, texts, prepared=None):
        if video is None:
            return None, video_error
        vision = vision_parts(video, self.settings.video_input)  # encoded once per video
        return partial(self.answer, vision), None

    def answer(self, vision: list[dict], prompts: list[str], max_new_tokens: int | None = None):
        limit = max_new_tokens or self.max_new_tokens
        requests = [chat_messages(vision, prompt, self.system_prompt) for prompt in prompts]
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            answers = list(pool.map(lambda messages: ask(self.client, self.settings.model, messages, limit), requests))
        self.server_models |= {provenance["server_model"] for _, _, provenance in answers if provenance}
        return answers


def served_worker(config) -> tuple[ServedAnswerer, dict, list[str]]:
    """A served model's answerer, what the worker's report says of it, and the log lines naming the run's settings
    that the server decides instead (`config`: the run's EvalConfig)."""
    settings = ServerSettings(
        config.api_base,
        config.model_name,
        config.api_key_env,
        config.api_concurrency,
        config.api_timeout,
        config.api_retries,
        config.video_input,
    )
    answerer = ServedAnswerer(make_client(settings), settings, config.system_prompt, config.max_new_tokens)
    request = {"temperature": 0, "max_tokens": config.max_new_tokens}
    api = {"api_base": settings.api_base, "concurrency": settings.concurrency, "timeout": settings.timeout}
    info = {"backend": "openai", "device": f"server at {settings.api_base}", "dtype": "server's"}
    info["attention"] = "server's"
    info |= {"generation": request, "api": api | {"retries": settings.retries, "video_input": settings.video_input}}
    return answerer, info, unhonoured_settings(config)


def unhonoured_settings(config) -> list[str]:
    """Log lines naming each score-changing setting of the run that the server decides instead of the protocol."""
    names = [name for name in SERVER_DECIDES if name != "position_fps" or config.video_input == "video"]
    return [f"{name} {getattr(config, name)!r} not sent: {SERVER_DECIDES[name]}" for name in names]
