"""Many visitors: batched against one at a time over HTTP, two models at once, a download beside a chat,
and the real 1.8b shape through the app's own load path."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from bench import gate, models, server
from bench.stats import Row, Sample, percentile
from bench.streaming import MESSAGE, Plain, chat_payload, http_chat
from inference import TINY_MODELS, Inference, Registry, SamplingOptions
from inference.local import kvcache, memory
from inference.local.backend import TransformersBackend
from inference.local.spm import from_sentencepiece
from inference.progress import Downloading, Finished
from inference.registry import Architecture

# A short answer (the chat's default allows 1,024): long enough that a reply is mostly decoding,
# as chat replies are, and short enough for a run of a few minutes.
TOKENS = 64
ROUNDS = 3  # messages each visitor sends in the "chatting" scenario


def _accept(url: str) -> str:
    from gradio_client import Client

    _, receipt = Client(url, verbose=False).predict(**gate.API_FORM, api_name="/accept_terms")
    return receipt


@dataclasses.dataclass
class Visitor:
    """A simulated visitor: an identity that accepted the terms, and a connection of its own."""

    url: str
    receipt: str
    http: httpx.Client = dataclasses.field(default_factory=lambda: httpx.Client(timeout=600))

    def chat(self, model_id: str, tokens: int, message: str = MESSAGE) -> tuple[float, float, str]:
        """One message over Gradio's HTTP stream: (first update s, last update s, text)."""
        return http_chat(self.http, self.url, chat_payload(message, model_id, tokens, self.receipt))


def crowd(visitors: list[Visitor], n: int, tokens: int = TOKENS) -> tuple[float, list[float]]:
    """``n`` visitors sending at the same instant, each with its own identity and question: aggregate tok/s
    and each one's first-update time."""
    with ThreadPoolExecutor(n) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda i: visitors[i].chat("tiny-llama", tokens, f"{MESSAGE} {i}"), range(n)))
        wall = time.perf_counter() - started
    return n * tokens / wall, [r[0] for r in results]


def chatting(visitors: list[Visitor], spread: float, tokens: int = TOKENS) -> list[float]:
    """The visitors chatting at once: each sends ``ROUNDS`` messages, the next as soon as a reply has
    ended, their first messages spread over ``spread`` seconds. Every message's first-update time."""
    n = len(visitors)

    def visitor(i: int) -> list[float]:
        time.sleep(spread * i / n)
        return [visitors[i].chat("tiny-llama", tokens, f"{MESSAGE} {i}.{r}")[0] for r in range(ROUNDS)]

    with ThreadPoolExecutor(n) as pool:
        return [first for firsts in pool.map(visitor, range(n)) for first in firsts]


def forward_scaling(path: Path, rows: int = 8, context: int = 40, steps: int = 20) -> float:
    """Tokens a second of the model's own decode step at ``rows`` rows over those at one row, in this process.

    What batching can give at most on this machine: where one row's step already keeps the cores
    busy (arithmetic-bound rather than bound by reading the weights), eight rows cost nearly eight
    times as much, and no scheduler can make up the difference.
    """
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    arg = kvcache.cache_argument(model)
    rate = {}
    with torch.inference_mode():
        for n in (1, rows):
            out = model(torch.full((n, context), 5), use_cache=True)
            step = torch.full((n, 1), 7)
            started = time.perf_counter()
            for _ in range(steps):
                out = model(step, use_cache=True, **{arg: getattr(out, arg, None) or out.past_key_values})
            rate[n] = n * steps / (time.perf_counter() - started)
    return rate[rows] / rate[1]


def concurrency_rows(data_dir: Path, runs: int) -> list[Row]:
    """1, 4 and 8 visitors on a ~110M Llama: batched (LLMJP_MAX_BATCH=8) against one at a time (=1)."""
    path = models.llama_110m(data_dir / "llama-110m")
    ceiling = forward_scaling(path)
    measured: dict[int, dict[int, list[float]]] = {}
    firsts: dict[int, dict[int, list[float]]] = {}
    steady: list[float] = []
    reply_s = 0.0
    for batch in (8, 1):
        app = server.app(data_dir / f"batch{batch}", {"tiny-llama": str(path)}, {"LLMJP_MAX_BATCH": str(batch)})
        visitors = [Visitor(app.url, _accept(app.url)) for _ in range(8)]
        try:
            visitors[0].chat("tiny-llama", 4)  # loads the model
            measured[batch], firsts[batch] = {}, {}
            for n in (1, 4, 8):
                for _ in range(runs):
                    tok_s, first = crowd(visitors, n)
                    measured[batch].setdefault(n, []).append(tok_s)
                    firsts[batch].setdefault(n, []).extend(first)
            if batch == 8:
                reply_s = TOKENS / statistics.median(measured[8][1])
                # The baseline of the first-update rows: one visitor at a time, more often than a crowd,
                # and between the crowds, so that it sees the machine as they do.
                for _ in range(runs):
                    firsts[8][1] += [visitors[0].chat("tiny-llama", TOKENS)[0] for _ in range(3)]
                    steady.extend(chatting(visitors, reply_s))
                firsts[8][1] += [visitors[0].chat("tiny-llama", TOKENS)[0] for _ in range(3)]
        finally:
            for v in visitors:
                v.http.close()
            app.stop()
    rows = []
    for n in (1, 4, 8):
        batched, alone = Sample(tuple(measured[8][n])), Sample(tuple(measured[1][n]))
        ratio = batched.median / alone.median
        bound = f" (the model's own step at 8 rows: {ceiling:.2f}× its tok/s at 1, here)" if n == 8 else ""
        rows.append(
            Row(f"7. {n} visitor{'s' if n > 1 else ''} sending at once over HTTP, ~110M Llama, {TOKENS} tokens each: "
                "aggregate tok/s", f"batched: {batched.show()}", f"one at a time: {alone.show()}", f"{ratio:.2f}×{bound}",
                "≥ 3× at 8" if n == 8 else "(reported)", ratio >= 3 if n == 8 else True)
        )  # fmt: skip
    alone_first = statistics.median(firsts[8][1]) * 1000
    burst = percentile(firsts[8][8], 95) * 1000
    chat = percentile(steady, 95) * 1000
    rows += [
        Row("7b. first update, p95 (ms), 8 visitors chatting at once (each sends its next message when its reply "
            f"ends; first messages spread over one reply, {reply_s:.1f} s), batched", f"{chat:.0f} over {len(steady)} "
            "messages", f"first update alone: {alone_first:.0f}", f"{chat / alone_first:.2f}×", "≤ 2×",
            chat / alone_first <= 2),
        Row("7c. first update, p95 (ms), 8 visitors sending at the same instant, batched", f"{burst:.0f}",
            f"first update alone: {alone_first:.0f} (one at a time, p95: {percentile(firsts[1][8], 95) * 1000:.0f})",
            f"{burst / alone_first:.2f}×", "(reported: eight prefills' arithmetic, see the notes)", True),
    ]  # fmt: skip
    return rows


# -- in-process: two models, a download beside a chat ----------------------------------


async def _timed(inference: Inference, model_id: str, tokens: int) -> list[tuple[float, object]]:
    options = SamplingOptions(temperature=0, max_new_tokens=tokens)
    return [(time.perf_counter(), item) async for item in inference.stream(model_id, [], MESSAGE, options)]


def _rate(items: list[tuple[float, object]]) -> tuple[float, float, float]:
    """When text started and ended, and the decoding rate between (loads and prefill left out)."""
    texts = [t for t, item in items if isinstance(item, str)]
    done = items[-1][1]
    assert isinstance(done, Finished) and done.completion_tokens > 1
    return texts[0], texts[-1], (done.completion_tokens - 1) / (texts[-1] - texts[0])


def two_models_rows(data_dir: Path) -> list[Row]:
    """Two visitors on two loaded models: both stream at once, neither is unloaded."""
    path = models.llama_110m(data_dir / "llama-110m")
    llama = dataclasses.replace(Registry.of(TINY_MODELS).get("tiny-llama"), source=str(path), tiny=False)
    mixtral = Registry.of(TINY_MODELS).get("tiny-mixtral")
    registry = Registry.of([llama, mixtral])
    backend = TransformersBackend(models_dir=data_dir / "models", max_loaded=2)
    inference = Inference(registry, backend)
    for model_id in ("tiny-llama", "tiny-mixtral"):
        backend.load(registry.get(model_id))
    alone = {m: _rate(asyncio.run(_timed(inference, m, 64)))[2] for m in ("tiny-llama", "tiny-mixtral")}

    async def both() -> list:
        return await asyncio.gather(_timed(inference, "tiny-llama", 64), _timed(inference, "tiny-mixtral", 2000))

    a, b = asyncio.run(both())
    (a0, a1, a_rate), (b0, b1, b_rate) = _rate(a), _rate(b)
    overlap = min(a1, b1) - max(a0, b0)
    loaded = sorted(backend.loaded_ids())
    ok = overlap > 0 and loaded == ["tiny-llama", "tiny-mixtral"]
    return [
        Row("8. two visitors on two loaded models at once (in-process): tok/s each",
            f"110M Llama {a_rate:.1f}, tiny Mixtral {b_rate:.0f}",
            f"each alone: {alone['tiny-llama']:.1f}, {alone['tiny-mixtral']:.0f}",
            f"streamed together for {overlap:.1f} s; loaded after: {', '.join(loaded)}",
            "both stream, neither unloaded", ok)
    ]  # fmt: skip


def download_rows(data_dir: Path) -> list[Row]:
    """A chat on a loaded model while another model's download is under way (the hub stand-in, held half-way)."""
    from huggingface_hub import constants

    from inference.local import tiny
    from tests.fake_hub import FakeHub

    path = models.llama_110m(data_dir / "llama-110m")
    llama = dataclasses.replace(Registry.of(TINY_MODELS).get("tiny-llama"), source=str(path), tiny=False)
    fetched = dataclasses.replace(
        Registry.of(TINY_MODELS).get("tiny-gpt2"), id="hub-gpt2", source="llm-jp/tiny-gpt2", tiny=False
    )
    hold = threading.Event()
    repo = tiny.ensure(Architecture.GPT2, data_dir / "models")
    # Padded past the stand-in's hold threshold so the download stops half-way.
    (repo / "padding.safetensors").write_bytes(b"\0" * 2_000_000)
    with FakeHub({"llm-jp/tiny-gpt2": repo}, hold=hold) as fake:
        saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE)
        constants.ENDPOINT = fake.url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_OFFLINE = False
        try:
            backend = TransformersBackend(models_dir=data_dir / "models", max_loaded=2, hub_cache=data_dir / "hub")
            inference = Inference(Registry.of([llama, fetched]), backend)
            backend.load(llama)
            before = _rate(asyncio.run(_timed(inference, "tiny-llama", 64)))[2]

            async def during() -> tuple[list, list]:
                waiting = asyncio.create_task(_timed(inference, "hub-gpt2", 8))
                await asyncio.sleep(1.0)
                chat = await _timed(inference, "tiny-llama", 64)
                hold.set()
                return chat, await waiting

            chat, fetched_items = asyncio.run(during())
        finally:
            hold.set()
            constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE = saved
            (repo / "padding.safetensors").unlink()
    rate = _rate(chat)[2]
    heard = sum(isinstance(item, Downloading) for _, item in fetched_items)
    return [
        Row("9. a chat on a loaded model while another model downloads (in-process, hub stand-in): tok/s",
            f"{rate:.1f} during the download", f"{before:.1f} with no download", f"{rate / before:.2f}×; "
            f"the waiting visitor saw {heard} download updates", "≥ 0.8× (shared cores), not blocked", rate / before >= 0.8)
    ]  # fmt: skip


# -- the real 1.8b shape -------------------------------------------------------------


def llmjp_18b(path: Path) -> Path:
    """llm-jp-3.1-1.8b's configuration with random weights (bf16 on disk, as published) and the real tokenizer."""
    if (path / "config.json").exists():
        return path
    tokenizer = from_sentencepiece(models.VER3)
    config = LlamaConfig(
        vocab_size=99_487, hidden_size=2048, intermediate_size=7168, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return path


def real_shape_rows(data_dir: Path, runs: int) -> list[Row]:
    """The 1.8b shape through app.py (its load path, its web layer) against plain generate() in this process."""
    path = llmjp_18b(data_dir / "llm-jp-3.1-1.8b-random")
    tokens = 24
    env = {"LLMJP_MODELS": "llm-jp-3.1-1.8b-instruct4", "LLMJP_WARM_UP_S": "0"}
    app = server.app(data_dir / "real", {"llm-jp-3.1-1.8b-instruct4": str(path)}, env)
    try:
        visitor = Visitor(app.url, _accept(app.url))
        time.sleep(15)  # the warm-up imports torch and transformers: not part of the model's memory
        before = server.rss_mib(app.process.pid) * 1024**2
        visitor.chat("llm-jp-3.1-1.8b-instruct4", 2)  # loads it
        grown = server.rss_mib(app.process.pid) * 1024**2 - before
        estimate = memory.need(AutoConfig.from_pretrained(path), torch.float32, 4096).weights
        plain = Plain.__new__(Plain)
        plain.tokenizer = AutoTokenizer.from_pretrained(path)
        plain.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
        from inference.prompts import conversation, render
        from inference.registry import PromptFormat

        prompt = render(plain.tokenizer, PromptFormat.LLMJP3_CHAT, conversation(PromptFormat.LLMJP3_CHAT, [], MESSAGE))
        plain.ids = plain.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        plain.run(2)
        ratios, served, base = [], [], []
        for _ in range(runs):
            seconds, ids = plain.run(tokens)
            _, last, text = visitor.chat("llm-jp-3.1-1.8b-instruct4", tokens)
            if text != plain.text(ids):
                raise AssertionError("the 1.8b shape replied differently through the app than from generate()")
            base.append(len(ids) / seconds)
            served.append(len(ids) / last)
            ratios.append(served[-1] / base[-1])
        del plain
    finally:
        app.stop()
    r = Sample(tuple(ratios))
    off = grown / estimate - 1
    return [
        Row(f"10a. llm-jp-3.1-1.8b shape (random weights, fp32, 99k tokenizer) through app.py over HTTP, {tokens} "
            "tokens: tok/s", Sample(tuple(served)).show(), f"generate(): {Sample(tuple(base)).show()}",
            r.show("{:.3f}"), "≥ 0.97", r.median >= 0.97),
        Row("10b. its memory: the app's estimate against the growth in resident memory when it loads",
            f"estimate {estimate / memory.GB:.2f} GB", f"measured {grown / memory.GB:.2f} GB", f"{off:+.1%}",
            "within ±5%", abs(off) <= 0.05),
    ]  # fmt: skip
