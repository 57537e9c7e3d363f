"""An ASGI guard in front of Gradio: who may call from a browser, and how big a request may be."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from inference.errors import AppError
from webapp.boundary.doors import Doors, Refused, log_refusal, refusal_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

# The largest request body the app needs: a long conversation is well under
# this (histories are bounded far below it); uploads have their own limit.
MAX_BODY_BYTES = 2 * 1024 * 1024


# The routes that run an event: the queue, and the direct calls by name.
EVENT_ROUTE = re.compile(r"/(?P<kind>queue/join|run|api|call/v2|call)(?:/(?P<name>[^/]+))?/?$")
UPLOAD = re.compile(r"/upload/?$")
HEARTBEAT = re.compile(r"/heartbeat/([^/]*)/?$")
# Gradio's deep links write each session's page state to disk; the app offers none.
DEEP_LINK = re.compile(r"/deep_link/?$")
NO_UPLOADS = (
    "このアプリはファイルのアップロードを受け付けていません。",
    "This app takes no file uploads.",
)

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
            await _refuse(
                scope,
                receive,
                send,
                403,
                "他のサイトからのリクエストは受け付けません。 / Cross-origin request refused.",
            )
            return
        path = scope.get("path", "")
        post = scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH")
        if scope["type"] == "http" and DEEP_LINK.search(path):
            await _refuse(
                scope, receive, send, 404, "このページへのリンクは提供していません。 / Deep links are not offered."
            )
            return
        if scope["type"] == "http" and UPLOAD.search(path):
            # The app takes no files: nothing is read, nothing reaches the disk.
            await _refuse_with(scope, receive, send, Refused("upload", *NO_UPLOADS, status=403))
            return
        if post:
            length = headers.get("content-length")
            if length is None and "transfer-encoding" in headers:
                await _refuse(scope, receive, send, 411, "リクエストの長さが必要です。 / Length required.")
                return
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _refuse(scope, receive, send, 413, "リクエストが大きすぎます。 / Request too large.")
                return
        sessions = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [])
        if (beat := HEARTBEAT.search(path)) is not None:
            sessions.append(beat.group(1))
        if not _session_ok(sessions):
            await _refuse(scope, receive, send, 400, BAD_SESSION)
            return
        if not post:
            await self.app(scope, receive, send)
            return
        route = EVENT_ROUTE.search(path)
        doors = _doors_of(scope)
        if route is not None and doors is not None:
            try:
                doors.count(scope.get("headers", []), (scope.get("client") or (None,))[0])
            except AppError as exc:
                await _refuse_with(scope, receive, send, exc, 429)
                return
        # Every body Gradio reads is read here first: its session hash (the queue, the state and the
        # heartbeat key what they keep by it) and, for an event, every value against its bounds.
        body, receive = await _buffered(receive)
        try:
            parsed = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            parsed = None
            if route is not None:
                await _refuse_with(scope, receive, send, Refused("not-json"))
                return
        session = parsed.get("session_hash") if isinstance(parsed, dict) else None
        if session is not None and not _session_ok([session]):
            await _refuse(scope, receive, send, 400, BAD_SESSION)
            return
        if route is not None and doors is not None:
            kind, name = route.group("kind"), route.group("name")
            try:
                doors.check(kind, name, parsed)
            except Refused as exc:
                await _refuse_with(scope, receive, send, exc)
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
    from webapp.gate.identity import SESSION_HASH

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


def _doors_of(scope: Scope) -> Doors | None:
    """The bounds of the app being served (``webapp.factory`` declares them on the Blocks)."""
    app = scope.get("app")
    blocks = app.get_blocks() if app is not None and hasattr(app, "get_blocks") else None
    return getattr(blocks, "llmjp_doors", None)


async def _refuse_with(scope: Scope, receive: Callable, send: Callable, exc: AppError, status: int = 0) -> None:
    log_refusal(exc)
    status = status or getattr(exc, "status", 400)
    await _send(scope, send, status, refusal_body(exc, status), b"application/json")


_KINDS = {400: "session-hash", 403: "cross-origin", 411: "length-required", 413: "body-too-large"}


async def _refuse(scope: Scope, receive: Callable, send: Callable, status: int, reason: str) -> None:
    log_refusal(Refused(_KINDS.get(status, str(status))))
    await _send(scope, send, status, reason.encode(), b"text/plain; charset=utf-8")


async def _send(scope: Scope, send: Callable, status: int, body: bytes, content_type: bytes) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
