"""Section ``relay``: does one app process keep up with a fast engine?

The real app (``python app.py``) serves ``tiny-llama`` through an engine
process the app starts itself, the stand-in OpenAI server
(``tests/engine_standin.py``) sending 100 tok/s per stream, vLLM's pace on a
GPU. Visitors (each its own identity, the per-address limits lifted) stream
``/chat`` over Gradio's HTTP API all at once. The baseline is the engine
alone: the same number of streams straight to the stand-in. Reported: the p95
first-token time the app adds, the share of each stream's token rate the app
keeps, and the number of visitors at which the app's p95 first token doubles
from a lone visitor's, with the app process's CPU at that point (what bounds it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from bench import server
from bench.serving import _accept
from bench.stats import Row, percentile
from bench.streaming import MESSAGE, chat_payload

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "engine_standin.py"
RATE = 100.0
TOKENS = 200  # two seconds a stream at 100 tok/s
FULL = (1, 25, 50, 100, 200, 400)


def _stream_rate(first: float, last: float, tokens: int) -> float:
    return (tokens - 1) / (last - first) if last > first else float("nan")


async def _engine_alone(port: int, n: int) -> list[tuple[float, float]]:
    """(first token s, per-stream tok/s) of ``n`` streams straight to the engine."""
    body = {"model": "tiny-llama", "prompt": MESSAGE, "max_tokens": TOKENS, "stream": True,
            "add_special_tokens": False, "temperature": 0.0}  # fmt: skip

    async def one(client: httpx.AsyncClient) -> tuple[float, float]:
        started = time.perf_counter()
        first = last = 0.0
        async with client.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    last = time.perf_counter() - started
                    first = first or last
        return first, _stream_rate(first, last, TOKENS)

    limits = httpx.Limits(max_connections=n + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return await asyncio.gather(*(one(client) for _ in range(n)))


async def _through_app(url: str, receipts: list[str]) -> list[tuple[float, float]]:
    """(first update s, per-stream tok/s) of one /chat stream per receipt, all at once."""
    base = url.rstrip("/") + "/gradio_api/call/chat"

    async def one(client: httpx.AsyncClient, i: int, receipt: str) -> tuple[float, float]:
        started = time.perf_counter()
        first = last = 0.0
        data = chat_payload(f"{MESSAGE} {i}", "tiny-llama", TOKENS, receipt)
        joined = await client.post(base, json={"data": data})
        if joined.status_code != 200:
            raise RuntimeError(f"/chat refused: HTTP {joined.status_code} {joined.text[:200]}")
        event = joined.json()["event_id"]
        async with client.stream("GET", f"{base}/{event}") as events:
            kind = ""
            async for line in events.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "generating":
                    last = time.perf_counter() - started
                    first = first or last
                elif line.startswith("data:") and kind == "error":
                    raise RuntimeError(f"/chat failed: {json.loads(line[5:])}")
        return first, _stream_rate(first, last, TOKENS)

    limits = httpx.Limits(max_connections=2 * len(receipts) + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return await asyncio.gather(*(one(client, i, r) for i, r in enumerate(receipts)))


def _engine_port(app: psutil.Process, timeout: float = 120) -> int:
    """The port the app's engine process listens on, once it does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in app.children(recursive=True):
            if str(STANDIN) in " ".join(child.cmdline()):
                for c in child.net_connections("tcp"):
                    if c.status == psutil.CONN_LISTEN:
                        return c.laddr.port
        time.sleep(0.2)
    raise TimeoutError("the engine did not start")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def rows(data_dir: Path, visitors: tuple[int, ...] = FULL) -> list[Row]:
    """The relay rows; ``visitors`` lists the crowd sizes, the largest being the row's figure."""
    command = f"{{python}} {STANDIN} --name {{name}} --port {{port}} --rate {RATE:g}"
    app = server.app(
        data_dir / "relay",
        extra={
            "LLMJP_ENGINE": "vllm", "LLMJP_ENGINE_PYTHON": sys.executable, "LLMJP_ENGINE_COMMAND": command,
            "LLMJP_MODELS": "tiny-llama", "LLMJP_PRELOAD": "tiny-llama", "LLMJP_WARM_UP_S": "0",
            "LLMJP_REMOTE_CONCURRENCY": "1024", "LLMJP_MAX_QUEUE": "10000",
        },
    )  # fmt: skip
    try:
        proc = psutil.Process(app.process.pid)
        port = _engine_port(proc)
        with ThreadPoolExecutor(16) as pool:
            receipts = list(pool.map(lambda _: _accept(app.url), range(max(visitors))))
        asyncio.run(_through_app(app.url, receipts[:2]))  # warm-up: the engine's first requests, the tokenizer
        measured = {}
        for n in visitors:
            alone = asyncio.run(_engine_alone(port, n))
            before = _cpu(proc), time.perf_counter()
            relayed = asyncio.run(_through_app(app.url, receipts[:n]))
            cpu = (_cpu(proc) - before[0]) / (time.perf_counter() - before[1])
            measured[n] = (alone, relayed, cpu)
    finally:
        app.stop()
    return _rows(measured)


def _rows(measured: dict[int, tuple[list, list, float]]) -> list[Row]:
    out = []
    lone = percentile([f for f, _ in measured[min(measured)][1]], 95)
    doubled = next((n for n, (_, relayed, _) in measured.items() if percentile([f for f, _ in relayed], 95) >= 2 * lone), None)  # fmt: skip
    for n, (alone, relayed, cpu) in measured.items():
        p95_alone, p95_app = (percentile([f * 1000 for f, _ in s], 95) for s in (alone, relayed))
        rate_alone, rate_app = (percentile([r for _, r in s], 50) for s in (alone, relayed))
        keep = min(r for _, r in relayed) / percentile([r for _, r in alone], 50)
        added = p95_app - p95_alone
        out.append(
            Row(f"7. relay, {n} visitors streaming at once from an engine process at {RATE:g} tok/s: p95 first "
                "token (ms); per-stream tok/s (median; worst stream's share of the engine's)",
                f"{p95_app:.0f} ms; {rate_app:.1f} tok/s", f"engine alone: {p95_alone:.0f} ms; {rate_alone:.1f} tok/s",
                f"+{added:.0f} ms; worst {keep:.2f}; app CPU {cpu:.0%} of a core",
                "≤ +50 ms, ≥ 0.95" if n >= 200 else "(reported)", added <= 50 and keep >= 0.95 if n >= 200 else True)
        )  # fmt: skip
    out.append(
        Row("7b. relay: visitors at which the app's p95 first token doubles from a lone visitor's",
            f"{doubled}" if doubled else f"not reached by {max(measured)}", f"lone visitor: {lone * 1000:.0f} ms",
            f"app CPU at that point: {measured[doubled][2]:.0%} of a core" if doubled else "", "(reported)", True)
    )  # fmt: skip
    return out


if __name__ == "__main__":
    import tempfile

    counts = tuple(int(n) for n in sys.argv[1:]) or FULL
    with tempfile.TemporaryDirectory(prefix="llmjp-relay-") as tmp:
        for row in rows(Path(tmp), counts):
            print(f"{row.metric}\n  {row.project} | {row.baseline} | {row.result} | {row.target} | {row.met}")
    os._exit(0)
