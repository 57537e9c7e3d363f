"""An OpenAI-compatible server that stands in for vLLM where no GPU is: the same protocol, fake tokens.

The app starts it through the same supervision code as vLLM
(``LLMJP_ENGINE_COMMAND``). It answers ``/health``, ``/v1/models`` and
streaming ``/v1/completions`` with vLLM's request fields (``top_k``,
``repetition_penalty``, ``seed``, ``add_special_tokens``) and its usage
chunk, sends tokens at a set rate per stream, and stops a request when its
client goes away. It is strict where vLLM is lenient: an unknown field or a
value out of range is refused (400), so a request the app builds wrongly
fails a test. ``/stats`` tells tests how many requests ran, finished and
were cancelled. Plain asyncio, no web framework: at 200 streams of 100
tok/s it must not be the slowest part of a benchmark.

    python tests/engine_standin.py --name tiny-llama --port 8000 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

# A reply is drawn from these pieces, one per token: Japanese text, as the real models write.
PIECES = (
    "富士山",
    "は",
    "日本",
    "で",
    "一番",
    "高い",
    "山",
    "です",
    "。",
    "静岡県",
    "と",
    "山梨県",
    "に",
    "あり",
    "ます",
)
FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "seed", "top_k", "repetition_penalty",
    "add_special_tokens", "stream", "stream_options",
}  # fmt: skip


def frame(data: bytes) -> bytes:
    """One chunk of a chunked HTTP body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check(body: dict, name: str) -> None:
    """Refuse what vLLM would refuse, and what the app must never send."""
    if unknown := set(body) - FIELDS:
        raise Refused(400, f"unknown fields: {sorted(unknown)}")
    if body.get("model") != name:
        raise Refused(404, f"The model `{body.get('model')}` does not exist.")
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        raise Refused(400, "prompt must be a non-empty string")
    rules = (
        ("max_tokens", lambda v: isinstance(v, int) and v >= 1),
        ("temperature", lambda v: v >= 0),
        ("top_p", lambda v: 0 < v <= 1),
        ("top_k", lambda v: v == -1 or v >= 1),
        ("repetition_penalty", lambda v: v > 0),
    )
    for field, ok in rules:
        if field in body and not ok(body[field]):
            raise Refused(400, f"{field} out of range, got {body[field]!r}")
    if body.get("add_special_tokens") is not False:
        raise Refused(400, "the app renders the BOS itself: add_special_tokens must be false")


class Standin:
    def __init__(self, name: str, rate: float, start_delay: float, never_healthy: bool) -> None:
        self.name = name
        self.rate = rate
        self.ready_at = time.monotonic() + start_delay
        self.never_healthy = never_healthy
        self.stats = {"requests": 0, "running": 0, "completed": 0, "cancelled": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request on a kept-alive connection; False once the client has gone."""
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = header.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        if path == "/health":
            healthy = not self.never_healthy and time.monotonic() >= self.ready_at
            await self._send(writer, 200 if healthy else 503, b"" if healthy else b'{"error": "starting"}')
        elif path == "/v1/models":
            await self._json(writer, 200, {"object": "list", "data": [{"id": self.name, "object": "model"}]})
        elif path == "/stats":
            await self._json(writer, 200, self.stats)
        elif path == "/v1/completions" and method == "POST":
            try:
                request = json.loads(body)
                check(request, self.name)
            except Refused as exc:
                await self._json(writer, exc.status, {"error": {"message": str(exc), "code": exc.status}})
                return True
            if not request.get("stream"):
                await self._json(writer, 400, {"error": {"message": "this stand-in streams only"}})
                return True
            await self._stream(reader, writer, request)
            return False
        else:
            await self._json(writer, 404, {"error": {"message": f"no route {path}"}})
        return True

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes, kind: str = "application/json"):
        head = f"HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    async def _json(self, writer: asyncio.StreamWriter, status: int, value: object) -> None:
        await self._send(writer, status, json.dumps(value).encode())

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict) -> None:
        """Server-sent events in chunked encoding, as uvicorn sends them: a cut connection is told from an end."""
        self.stats["requests"] += 1
        self.stats["running"] += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        seed = request.get("seed")
        rng = random.Random(0 if request.get("temperature", 1.0) == 0 else seed)
        gone = asyncio.ensure_future(reader.read(1))  # the client closing its end: a cancelled request
        base = {"id": f"cmpl-{self.stats['requests']}", "object": "text_completion", "created": int(time.time())}
        base["model"] = self.name
        wanted, made, started = request["max_tokens"], 0, asyncio.get_running_loop().time()

        def event(value: object) -> bytes:
            return frame(f"data: {json.dumps(value, ensure_ascii=False)}\n\n".encode())

        try:
            while made < wanted:
                due = started + (made + 1) / self.rate
                delay = due - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.wait({gone}, timeout=delay)
                if gone.done():
                    self.stats["cancelled"] += 1
                    print(f"request {base['id']} cancelled after {made} tokens", flush=True)
                    return
                made += 1
                finish = "length" if made == wanted else None
                choice = {"index": 0, "text": rng.choice(PIECES), "logprobs": None, "finish_reason": finish}
                writer.write(event(base | {"choices": [choice]}))
                await writer.drain()
            if (request.get("stream_options") or {}).get("include_usage"):
                prompt_tokens = len(request["prompt"])  # characters stand in for tokens here
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": made,
                    "total_tokens": prompt_tokens + made,
                }
                writer.write(event(base | {"choices": [], "usage": usage}))
            writer.write(frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            self.stats["completed"] += 1
            print(f"request {base['id']} done: {made} tokens", flush=True)
        except ConnectionError:
            self.stats["cancelled"] += 1
        finally:
            self.stats["running"] -= 1
            gone.cancel()


async def serve(args: argparse.Namespace) -> None:
    standin = Standin(args.name, args.rate, args.start_delay, args.never_healthy)
    server = await asyncio.start_server(standin.handle, args.host, args.port, backlog=1024)
    print(f"stand-in engine serving {args.name} on {args.host}:{args.port} at {args.rate:g} tok/s", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the served model name (vLLM's --served-model-name)")
    parser.add_argument("--model", default="", help="the weights vLLM would load; only printed here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second per stream")
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds before /health answers 200")
    parser.add_argument("--never-healthy", action="store_true", help="/health never answers 200")
    parser.add_argument("--exit-at-start", type=int, default=None, help="exit at once with this code")
    args, _ = parser.parse_known_args(argv)  # vLLM's other flags (--gpu-memory-utilization ...) are accepted
    if args.exit_at_start is not None:
        print("stand-in engine: exiting at start, as told", flush=True)
        sys.exit(args.exit_at_start)
    print(f"stand-in engine: weights {args.model or '(none)'}", flush=True)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
