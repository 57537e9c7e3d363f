"""An ASGI guard in front of Gradio: who may call from a browser, and how big a request may be."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

# The largest request body the app needs: a long conversation is well under
# this (histories are bounded far below it); uploads have their own limit.
MAX_BODY_BYTES = 2 * 1024 * 1024


BAD_SESSION = "セッション ID が不正です。ページを再読み込みしてください。 / Invalid session id. Reload the page."


class Guard:
    """Refuses oversized bodies, malformed session hashes, and (when ``same_origin``) other sites' pages.

    Gradio answers any origin, with credentials, when the app is not on
    localhost. With sign-in on, a page elsewhere could then act with a
    visitor's session cookie, so only the app's own origin (the request's
    Host) and ``allowed`` origins may call it.
    """

    def __init__(
        self, app: ASGIApp, *, same_origin: bool, allowed: frozenset[str] = frozenset(), max_body: int = MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.same_origin = same_origin
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.same_origin and not self._origin_ok(headers):
            await _refuse(scope, receive, send, 403, "cross-origin request refused")
            return
        if scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None and "transfer-encoding" in headers:
                await _refuse(scope, receive, send, 411, "length required")
                return
            too_large = length is not None and (not length.isdigit() or int(length) > self.max_body)
            if too_large and not scope.get("path", "").endswith("/upload"):  # max_file_size governs uploads
                await _refuse(scope, receive, send, 413, "request too large")
                return
        if not _session_ok(parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [])):
            await _refuse(scope, receive, send, 400, BAD_SESSION)
            return
        if scope["type"] == "http" and scope.get("path", "").endswith("/queue/join"):
            # The queue keys its state by the session hash in the body: check it before Gradio keeps it.
            body, receive = await _buffered(receive)
            try:
                session = json.loads(body).get("session_hash")
            except (ValueError, AttributeError):
                session = None
            if session is not None and not _session_ok([session]):
                await _refuse(scope, receive, send, 400, BAD_SESSION)
                return
        await self.app(scope, receive, send)

    def _origin_ok(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return True  # not a cross-site browser request (API clients, same-origin GETs)
        origin = origin.rstrip("/").lower()
        if origin in self.allowed:
            return True
        host = headers.get("host", "").lower()
        return bool(host) and urlsplit(origin).netloc == host


def _session_ok(values: list[object]) -> bool:
    from webapp.identity import SESSION_HASH

    return all(isinstance(v, str) and SESSION_HASH.fullmatch(v) for v in values)


async def _buffered(receive: Callable[[], Awaitable[Message]]) -> tuple[bytes, Callable[[], Awaitable[Message]]]:
    """The whole request body (already bounded by the length check), and a ``receive`` that replays it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _refuse(scope: Scope, receive: Callable, send: Callable, status: int, reason: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = reason.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
