"""Raw requests, as a hostile client would send them: any JSON value, any session hash, any header."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import RunningApp

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


@functools.cache
def _config(url: str) -> dict:
    return httpx.get(url.rstrip("/") + "/config", timeout=10).json()


@functools.cache
def _api(url: str) -> dict:
    from gradio_client import Client

    return Client(url, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]


def fn_index(app: RunningApp, api_name: str) -> int:
    return next(d["id"] for d in _config(app.url)["dependencies"] if d.get("api_name") == api_name)


def parameters(app: RunningApp, api_name: str) -> list[str]:
    """The endpoint's parameter names, in the order its raw data takes them."""
    return [p["parameter_name"] for p in _api(app.url)[f"/{api_name}"]["parameters"]]


def call(
    app: RunningApp,
    api_name: str,
    data: list[Any],
    session_hash: str,
    *,
    headers: dict[str, str] | None = None,
    index: int | None = None,
    event_data: dict[str, Any] | None = None,
    http: httpx.Client | None = None,
) -> dict:
    """Join the queue with a hand-written body and return the final message (``success``, ``output``).

    ``http`` reuses one client's connections across many calls (a table of cases).
    """
    base = app.url.rstrip("/") + "/gradio_api"
    body = json.dumps(
        {"data": data, "fn_index": fn_index(app, api_name) if index is None else index, "session_hash": session_hash}
        | ({"event_data": event_data} if event_data is not None else {})
    )
    with contextlib.nullcontext(http) if http is not None else httpx.Client(timeout=60, headers=headers or {}) as http:
        joined = http.post(f"{base}/queue/join", content=body, headers={"content-type": "application/json"})
        if joined.status_code >= 400:  # refused before the queue, with a reason
            return {"success": False, "output": {"error": refusal_of(joined)}, "status": joined.status_code}
        joined.raise_for_status()
        with http.stream(
            "GET",
            f"{base}/queue/data",
            params={"session_hash": session_hash} | ({"event_data": event_data} if event_data is not None else {}),
        ) as events:
            for line in events.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the stream ended without a result")


def refusal_of(response: httpx.Response) -> str:
    """The message of a request refused before it reached the queue (a validation list, a detail, or text)."""
    return refusal_in(response.content)


def refusal_in(body: bytes) -> str:
    """``refusal_of`` for a response's raw body."""
    try:
        detail = json.loads(body).get("detail")
    except ValueError:
        return body.decode("utf-8", errors="replace")
    if isinstance(detail, list):
        return " ".join(str(d.get("message")) for d in detail if isinstance(d, dict))
    return str(detail)


def error_of(result: dict) -> str | None:
    """The error a final message carries, or None for success."""
    if result.get("success"):
        return None
    return str((result.get("output") or {}).get("error"))


def is_clear_error(message: str | None) -> bool:
    """Bilingual (Japanese first, then English) and not the catch-all for bugs."""
    return bool(message) and " / " in message and bool(JAPANESE.search(message)) and "予期しない" not in message


def event_count(app: RunningApp) -> int:
    with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as conn:  # type: ignore[attr-defined]
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def database_bytes(app: RunningApp) -> int:
    """The database file and its WAL together."""
    path = app.settings.data_dir / "llmjp-demo.sqlite3"  # type: ignore[attr-defined]
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def stream(
    app: RunningApp,
    api_name: str,
    data: list[Any],
    session_hash: str,
    *,
    headers: dict[str, str] | None = None,
    event_data: dict[str, Any] | None = None,
    seen: Callable[[list[Any]], None] | None = None,
) -> tuple[dict, list[Any]]:
    """Join the queue and follow a streaming event: its final message, and its outputs as last streamed.

    Gradio streams a generator's first outputs whole and then as diffs; they
    are applied here as the page applies them. ``seen`` gets the outputs after
    each update.
    """
    base = app.url.rstrip("/") + "/gradio_api"
    body = {"data": data, "fn_index": fn_index(app, api_name), "session_hash": session_hash}
    body |= {"event_data": event_data} if event_data is not None else {}
    outputs: list[Any] = []
    with httpx.Client(timeout=120, headers=headers or {}) as http:
        joined = http.post(f"{base}/queue/join", json=body)
        if joined.status_code >= 400:
            return {"success": False, "output": {"error": refusal_of(joined)}, "status": joined.status_code}, outputs
        event_id = joined.json()["event_id"]
        with http.stream("GET", f"{base}/queue/data", params={"session_hash": session_hash}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id:
                    continue  # the session's other events (a Stop joined meanwhile) come on the same stream
                if message.get("msg") == "process_generating":
                    values = message["output"]["data"]
                    if not outputs:
                        outputs = list(values)
                    else:
                        outputs = [_patched(old, diff) for old, diff in zip(outputs, values, strict=True)]
                    if seen is not None:
                        seen(outputs)
                elif message.get("msg") == "process_completed":
                    return message, outputs
    raise AssertionError("the stream ended without a result")


def join(app: RunningApp, api_name: str, data: list[Any], session_hash: str) -> httpx.Response:
    """Join the queue without following the event (its messages go to the session's open stream)."""
    body = {"data": data, "fn_index": fn_index(app, api_name), "session_hash": session_hash}
    return httpx.post(app.url.rstrip("/") + "/gradio_api/queue/join", json=body, timeout=30)


def _patched(value: Any, diff: list[Any]) -> Any:
    """``value`` after Gradio's diff operations (replace, add, append, delete at a path)."""
    for op, path, new in diff:
        if not path:
            value = value if op == "replace" and isinstance(new, dict) and new.get("__type__") == "update" else new
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if op == "replace":
            parent[last] = new
        elif op == "add":
            parent.insert(last, new) if isinstance(parent, list) else parent.__setitem__(last, new)
        elif op == "append":
            parent[last] += new
        elif op == "delete":
            del parent[last]
    return value
