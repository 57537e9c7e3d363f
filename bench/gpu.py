"""Section ``gpu``: the app's transformers loop and vLLM, on random weights of the real 1.8b and 13b shapes.

Each model is built on the GPU from the registry's sizes (nothing is
downloaded). Per model: the GPU's weight-bandwidth floor (a decode step reads
every weight once, so ``batch × bandwidth / weight bytes`` tokens per second
is the most any engine can reach), plain ``generate()`` and the app's own
loop (``inference.local.batcher.Batcher``) at batch 1, 4 and 8 with their first-token
latency, the peak memory against the app's estimate (``inference.local.memory``),
and a seeded request run twice. Then vLLM at the same batches, when the
engine environment has it (``--load-format dummy``: random weights, same
shapes), started by the app's own supervision (``inference.servers.engines``).

``--smoke`` runs all of it on a CPU with the tiny shapes, the stand-in
engine taking vLLM's place, so that the test suite keeps it working.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM

from bench import models
from bench.stats import Row
from inference.local import memory, tiny
from inference.local.batcher import Batcher, Request
from inference.registry import CHECKPOINTS, TINY_MODELS, ModelSpec, Server
from inference.sampling import SamplingOptions
from inference.servers import engines as engine_processes

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "engine_standin.py"
REAL = ("llm-jp-3.1-1.8b-instruct4", "llm-jp-3.1-13b-instruct4")
PROMPT = "富士山について詳しく教えてください。" * 8
NOT_MEASURED = "not measured: no GPU was available to this run (python -m bench --sections gpu on one)"


@dataclasses.dataclass(frozen=True)
class Plan:
    specs: tuple[ModelSpec, ...]
    batches: tuple[int, ...]
    tokens: int
    device: str
    dtype: torch.dtype


def plan(smoke: bool) -> Plan:
    if smoke:
        spec = next(s for s in TINY_MODELS if s.id == "tiny-llama")
        return Plan((dataclasses.replace(spec, context=512),), (1, 2), 8, "cpu", torch.float32)
    if not torch.cuda.is_available():
        raise RuntimeError("the gpu section needs a CUDA GPU (or --smoke)")
    return Plan(tuple(s for s in CHECKPOINTS if s.id in REAL), (1, 4, 8), 128, "cuda", torch.bfloat16)


def tokenizer_for(smoke: bool):
    return tiny.tiny_tokenizer() if smoke else models.from_sentencepiece(models.VER3)


def build(spec: ModelSpec, p: Plan):
    """Random weights of ``spec``'s shape, made where they run."""
    config = spec.config()
    torch.manual_seed(0)
    with torch.device(p.device):
        model = AutoModelForCausalLM.from_config(config, dtype=p.dtype)
    return model.eval(), config


def bandwidth(p: Plan) -> float:
    """Bytes per second a device-to-device copy moves (read plus write)."""
    n = (1 << 30) if p.device == "cuda" else (1 << 26)
    src, dst = torch.empty(n, dtype=torch.uint8, device=p.device), torch.empty(n, dtype=torch.uint8, device=p.device)
    dst.copy_(src)
    sync(p)
    started = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    sync(p)
    return 2 * n * 10 / (time.perf_counter() - started)


def sync(p: Plan) -> None:
    if p.device == "cuda":
        torch.cuda.synchronize()


def plain_generate(model, ids: list[int], batch: int, p: Plan) -> float:
    """Aggregate tok/s of one static greedy batch through ``generate()``."""
    inputs = torch.tensor([ids] * batch, device=p.device)
    greedy = {"do_sample": False, "max_new_tokens": p.tokens, "min_new_tokens": p.tokens, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(inputs, **(greedy | {"max_new_tokens": 2, "min_new_tokens": 2}))
        sync(p)
        started = time.perf_counter()
        model.generate(inputs, **greedy)
        sync(p)
    return batch * p.tokens / (time.perf_counter() - started)


def app_loop(
    batcher: Batcher, ids: list[int], batch: int, p: Plan, options: SamplingOptions
) -> tuple[float, float, str]:
    """Aggregate tok/s, median first-token seconds and the first reply's text through the app's loop."""
    firsts: list[float] = []
    texts: list[list[str]] = [[] for _ in range(batch)]
    started = time.perf_counter()

    def emit_for(i: int):
        def emit(text: str) -> None:
            if not texts[i]:
                firsts.append(time.perf_counter() - started)
            texts[i].append(text)

        return emit

    requests = [Request(list(ids), options, p.tokens, emit_for(i), threading.Event()) for i in range(batch)]
    for r in requests:
        batcher.submit(r)
    for r in requests:
        r.done.wait()
    seconds = time.perf_counter() - started
    made = sum(r.completion_tokens for r in requests)
    return made / seconds, sorted(firsts)[len(firsts) // 2] if firsts else float("nan"), "".join(texts[0])


def transformers_rows(spec: ModelSpec, p: Plan, smoke: bool) -> list[Row]:
    tokenizer = tokenizer_for(smoke)
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids[:64]
    if p.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, config = build(spec, p)
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    floor_1 = bandwidth(p) / weights
    rows = []
    batcher = Batcher(model, tokenizer, max_batch=max(p.batches), name=spec.id)
    batcher.eos = -1  # random weights: no row may end early
    greedy = SamplingOptions(temperature=0, repetition_penalty=1.05, max_new_tokens=p.tokens)
    try:
        app_loop(batcher, ids, 1, dataclasses.replace(p, tokens=2), greedy)  # warm-up
        for batch in p.batches:
            plain = plain_generate(model, ids, batch, p)
            loop, first, _ = app_loop(batcher, ids, batch, p, greedy)
            floor = batch * floor_1
            rows.append(
                Row(f"5a. {spec.id} shape, {p.dtype}, batch {batch}: the app's loop (aggregate tok/s; first token)",
                    f"{loop:.1f} tok/s; {first * 1000:.0f} ms", f"generate(): {plain:.1f} tok/s; floor {floor:.0f}",
                    f"{loop / plain:.2f}× generate(), {loop / floor:.1%} of floor", "(reported)", True)
            )  # fmt: skip
        seeded = SamplingOptions(temperature=0.8, top_p=0.95, top_k=50, seed=1234, max_new_tokens=p.tokens)
        one, two = (app_loop(batcher, ids, 1, p, seeded)[2] for _ in range(2))
        rows.append(
            Row(f"5c. {spec.id} shape: a seeded request, twice, through the app's loop", "same" if one == two else
                "DIFFERENT", "", f"{len(one)} characters", "same", one == two)
        )  # fmt: skip
    finally:
        batcher.close()
    estimate = memory.need(config, p.dtype, spec.context).total
    peak = torch.cuda.max_memory_allocated() if p.device == "cuda" else None
    rows.append(
        Row(f"5d. {spec.id} shape: peak GPU memory at batch {max(p.batches)} against the app's estimate (GB)",
            f"{peak / 1e9:.2f}" if peak is not None else "(CUDA only)", f"estimate {estimate / 1e9:.2f}",
            f"{peak / estimate:.2f}× the estimate" if peak is not None else "", "≤ 1.0×",
            peak <= estimate if peak is not None else None)
    )  # fmt: skip
    del model, batcher
    gc.collect()
    if p.device == "cuda":
        torch.cuda.empty_cache()
    return rows


async def _streams(base_url: str, name: str, batch: int, tokens: int, seed: int | None) -> tuple[float, float, str]:
    """Aggregate tok/s, median first-token seconds and the first text of ``batch`` streams at once."""
    body = {
        "model": name, "prompt": PROMPT, "max_tokens": tokens, "stream": True, "add_special_tokens": False,
        "temperature": 0.8 if seed is not None else 0.0, "stream_options": {"include_usage": True},
    }  # fmt: skip
    if seed is not None:
        body["seed"] = seed
    firsts, made, texts = [], [], []
    started = time.perf_counter()

    async def one(client: httpx.AsyncClient) -> None:
        text, count = "", 0
        async with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = httpx.Response(200, content=line[6:]).json()
                if chunk.get("usage"):
                    count = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice["text"] and not text:
                        firsts.append(time.perf_counter() - started)
                    text += choice["text"]
        made.append(count)
        texts.append(text)

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(one(client) for _ in range(batch)))
    seconds = time.perf_counter() - started
    return sum(made) / seconds, sorted(firsts)[len(firsts) // 2], texts[0]


def vllm_rows(spec: ModelSpec, p: Plan, smoke: bool, workdir: Path) -> list[Row]:
    """vLLM (or, in a smoke run, the stand-in) at the same batches, started by the app's supervision."""
    label = "stand-in engine (smoke)" if smoke else "vLLM"
    python = Path(sys.executable) if smoke else ROOT / ".venv-vllm" / "bin" / "python"
    if not smoke and not engine_processes.has_vllm(python):
        return [Row(f"5b. {spec.id} shape: vLLM", f"not measured: {python} has no vLLM (./dev run makes it)", "", "",
                    "(reported)", None)]  # fmt: skip
    model_dir = workdir / spec.id
    config = spec.config()
    config.save_pretrained(model_dir)
    tokenizer_for(smoke).save_pretrained(model_dir)
    command = (
        f"{{python}} {STANDIN} --name {{name}} --port {{port}} --rate 1000"
        if smoke
        else engine_processes.VLLM_COMMAND + " --load-format dummy"
    )
    launch = engine_processes.Launch(command=command, python=str(python), start_timeout_s=900)
    served = dataclasses.replace(spec, source=str(model_dir), engine=Server.VLLM)
    engines = engine_processes.Engines(
        launch, remote=lambda: None, model_source=lambda s, report: (str(model_dir), None), max_loaded=1
    )
    rows = []
    try:
        started = time.perf_counter()
        engines.load(served)
        ready = time.perf_counter() - started
        url = engines.engine(spec.id).served.endpoint.base_url.removesuffix("/v1")
        asyncio.run(_streams(url, spec.id, 1, 2, None))  # warm-up
        for batch in p.batches:
            tok_s, first, _ = asyncio.run(_streams(url, spec.id, batch, p.tokens, None))
            rows.append(
                Row(f"5b. {spec.id} shape, batch {batch}: {label} (aggregate tok/s; first token)",
                    f"{tok_s:.1f} tok/s; {first * 1000:.0f} ms", f"ready after {ready:.0f} s", "", "(reported)", True)
            )  # fmt: skip
        one, two = (asyncio.run(_streams(url, spec.id, 1, p.tokens, 1234))[2] for _ in range(2))
        rows.append(
            Row(f"5c. {spec.id} shape: a seeded request, twice, through {label}", "same" if one == two else
                "DIFFERENT", "", f"{len(one)} characters", "same", one == two)
        )  # fmt: skip
    finally:
        engines.close()
    return rows


def rows(workdir: Path, *, smoke: bool = False) -> list[Row]:
    """Every row of the section; ``smoke``: tiny shapes on the CPU, the stand-in as the engine."""
    if not smoke and not torch.cuda.is_available():
        return [Row("5. GPU section: the app's loop, generate(), vLLM, memory, seeds", NOT_MEASURED, "", "",
                    "(reported)", None)]  # fmt: skip
    p = plan(smoke)
    out: list[Row] = []
    if p.device == "cuda":
        out.append(Row("5. GPU", torch.cuda.get_device_name(0), f"{bandwidth(p) / 1e9:.0f} GB/s copy bandwidth",
                       "", "(reported)", True))  # fmt: skip
    for spec in p.specs:
        out += transformers_rows(spec, p, smoke)
        out += vllm_rows(spec, p, smoke, workdir)
    return out
