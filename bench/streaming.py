"""Streaming through /chat against plain ``model.generate`` on the same model, prompt and tokens.

Plain and served runs alternate, pair by pair, so that slow drift in the
machine's speed affects both sides alike; each row reports the median of
the per-pair ratios.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from gradio_client import Client
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench import server
from bench.stats import Sample
from inference import TINY_MODELS, Registry
from inference.local.decoder import IncrementalDecoder
from inference.prompts import conversation, render

MESSAGE = "富士山について教えて"


class Plain:
    """``model.generate`` on the prompt the app renders, greedy: the baseline."""

    def __init__(self, model_id: str, path: Path) -> None:
        spec = Registry.of(TINY_MODELS).get(model_id)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
        prompt = render(self.tokenizer, spec.prompt_format, conversation(spec.prompt_format, [], MESSAGE))
        self.ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        self.run(8)  # warm-up

    def run(self, max_new_tokens: int) -> tuple[float, list[int]]:
        """Seconds taken, and the new token ids."""
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                self.ids, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )  # fmt: skip
        return time.perf_counter() - started, out[0, self.ids.shape[1] :].tolist()

    def text(self, ids: list[int]) -> str:
        """The ids decoded token by token, as the app streams them, for comparing replies."""
        decoder = IncrementalDecoder(self.tokenizer)
        return "".join(decoder.push([i]) for i in ids) + decoder.flush()


@dataclass(frozen=True)
class Pairs:
    """Alternating plain and served runs."""

    tokens: int
    plain_tok_s: Sample
    served_tok_s: Sample
    ratio: Sample
    http_tok_s: Sample
    http_ratio: Sample
    prefill_s: Sample
    first_update_s: Sample
    updates: Sample


def http_chat(http: httpx.Client, url: str, data: list[object]) -> tuple[float, float, str]:
    """First-update and last-update seconds, and the final text, over ``/gradio_api/call/chat``.

    Timed from the request, not from making ``http``: a visitor's page keeps its
    connection, and a new client (its TLS context) costs about 50 ms here, which
    would count against the server.
    """
    base = url.rstrip("/") + "/gradio_api/call/chat"
    started = time.perf_counter()
    first = last = 0.0
    text = ""
    event = http.post(base, json={"data": data}).json()["event_id"]
    with http.stream("GET", f"{base}/{event}") as events:
        kind = ""
        for line in events.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "generating":
                last = time.perf_counter() - started
                first = first or last
                text = json.loads(line[5:])[0]
            elif line.startswith("data:") and kind == "error":
                raise RuntimeError(f"/chat failed: {line[5:].strip()}")
    return first, last, text


def chat_payload(message: str, model_id: str, max_new_tokens: int, receipt: str) -> list[object]:
    """/chat's inputs in order, for Gradio's HTTP API (which takes every one): greedy, no seed."""
    # message, model_id, temperature, top_p, top_k, repetition_penalty, max_new_tokens, history, receipt, seed
    return [message, model_id, 0.0, 1.0, 0, 1.0, max_new_tokens, None, receipt, None]


def compare(client: Client, url: str, receipt: str, model_id: str, path: Path, max_new_tokens: int, runs: int) -> Pairs:
    """Time /chat (as a gradio_client consumer sees it) against plain generate(), run by run."""
    plain = Plain(model_id, path)
    request = {"model_id": model_id, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
               "max_new_tokens": max_new_tokens}  # fmt: skip
    client.predict(MESSAGE, **(request | {"max_new_tokens": 8}), api_name="/chat")  # loads the model there
    columns: dict[str, list[float]] = {
        k: [] for k in ("plain", "served", "ratio", "http", "http_ratio", "prefill", "first", "updates")
    }
    data = chat_payload(MESSAGE, model_id, max_new_tokens, receipt)
    expected = ""
    http = httpx.Client(timeout=120)
    for _ in range(runs):
        seconds, ids = plain.run(max_new_tokens)
        expected = expected or plain.text(ids)
        columns["prefill"].append(plain.run(1)[0])
        started = time.perf_counter()
        first = last = 0.0
        text, n = "", 0
        for update in client.submit(MESSAGE, **request, api_name="/chat"):
            last = time.perf_counter() - started
            first = first or last
            text, n = update, n + 1
        # Same model, prompt and greedy decoding: the same tokens, so the same text.
        if text != expected:
            raise AssertionError(f"{model_id}: /chat returned a different reply from generate()")
        # Timed to the arrival of the last tokens, not of the completion message after them.
        columns["plain"].append(len(ids) / seconds)
        columns["served"].append(len(ids) / last)
        columns["ratio"].append(columns["served"][-1] / columns["plain"][-1])
        columns["first"].append(first)
        columns["updates"].append(n)
        _, http_last, http_text = http_chat(http, url, data)
        if http_text != expected:
            raise AssertionError(f"{model_id}: the HTTP stream returned a different reply from generate()")
        columns["http"].append(len(ids) / http_last)
        columns["http_ratio"].append(columns["http"][-1] / columns["plain"][-1])
    http.close()
    s = {k: Sample(tuple(v)) for k, v in columns.items()}
    return Pairs(len(ids), s["plain"], s["served"], s["ratio"], s["http"], s["http_ratio"], s["prefill"], s["first"],
                 s["updates"])  # fmt: skip


def http_first_update(url: str, model_id: str, receipt: str, max_new_tokens: int, runs: int) -> Sample:
    """Seconds from request to first streamed update over Gradio's plain HTTP API (``/gradio_api/call/chat``)."""
    data = chat_payload(MESSAGE, model_id, max_new_tokens, receipt)
    base = url.rstrip("/") + "/gradio_api/call/chat"
    firsts = []
    with httpx.Client(timeout=60) as http:
        for _ in range(runs):
            started = time.perf_counter()
            event = http.post(base, json={"data": data}).json()["event_id"]
            first = None
            with http.stream("GET", f"{base}/{event}") as events:
                for line in events.iter_lines():
                    if first is None and line.startswith("data:") and line != "data: null":
                        first = time.perf_counter() - started
            firsts.append(first or 0.0)
    return Sample(tuple(firsts))


TRIVIAL = """
from collections.abc import AsyncIterator
import gradio as gr

async def echo(message: str) -> AsyncIterator[str]:
    '''Stream the message back at once.'''
    yield message

with gr.Blocks() as demo:
    gr.api(echo, api_name="echo")
demo.queue().launch()
"""


def trivial_first_update(runs: int) -> Sample:
    """First-update time of a one-line streaming endpoint through gradio_client: the client's own floor."""
    port = server.free_port()
    s = server.start([sys.executable, "-c", TRIVIAL], {"GRADIO_SERVER_PORT": str(port)}, port)
    try:
        client = Client(s.url, verbose=False)
        client.predict("x", api_name="/echo")
        firsts = []
        for _ in range(runs):
            started = time.perf_counter()
            for _update in client.submit("x", api_name="/echo"):
                firsts.append(time.perf_counter() - started)
                break
        return Sample(tuple(firsts))
    finally:
        s.stop()


def in_process(model_id: str, path: Path, max_new_tokens: int, runs: int) -> dict[str, Sample]:
    """Where a lone visitor's time goes inside the server: tok/s ratios to generate(), pair by pair.

    ``loop``: the Batcher on the calling thread (the decoding loop and sampler
    alone). ``engine``: ``Inference.stream`` on its own event loop, so the
    model's own thread (at its lower priority), the mailbox and the merging
    of updates, without HTTP or Gradio.
    """
    import asyncio
    import dataclasses
    import threading

    from inference import Inference, SamplingOptions
    from inference.local.backend import TransformersBackend
    from inference.local.batcher import Batcher, Request

    plain = Plain(model_id, path)
    options = SamplingOptions(temperature=0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=max_new_tokens)
    loop_batcher = Batcher(plain.model, plain.tokenizer, start=False)
    # The same weights, loaded as the app loads them (as LLMJP_MODEL_PATHS points at them).
    spec = dataclasses.replace(Registry.of(TINY_MODELS).get(model_id), source=str(path), tiny=False)
    engine = Inference(Registry.of([spec]), TransformersBackend(models_dir=path.parent))

    def on_loop() -> float:
        request = Request(plain.ids[0].tolist(), options, max_new_tokens, lambda _: None, threading.Event())
        started = time.perf_counter()
        loop_batcher.run_alone(request)
        return request.completion_tokens / (time.perf_counter() - started)

    async def through_engine() -> float:
        started = time.perf_counter()
        last, tokens = started, 0
        async for item in engine.stream(model_id, [], MESSAGE, options):
            if isinstance(item, str):
                last = time.perf_counter()
            elif type(item).__name__ == "Finished":
                tokens = item.completion_tokens
        return tokens / (last - started)

    on_loop()
    asyncio.run(through_engine())
    columns: dict[str, list[float]] = {"loop": [], "engine": []}
    for _ in range(runs):
        seconds, ids = plain.run(max_new_tokens)
        base = len(ids) / seconds
        columns["loop"].append(on_loop() / base)
        columns["engine"].append(asyncio.run(through_engine()) / base)
    return {k: Sample(tuple(v)) for k, v in columns.items()}
