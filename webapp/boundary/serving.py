"""The web server's own limits against held-open connections, and Gradio's idle costs trimmed.

Gradio starts uvicorn itself and passes none of its limits through
``launch()``. uvicorn reads them from its config for each new connection, so
they are set on the running server's config right after the launch. uvicorn
has no deadline for a request's headers: a connection that sends a partial
request (or nothing) is held until the client closes it. A small reaper
closes connections that have had no request in progress for longer than the
header deadline; replies being streamed are never touched.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
import threading
import time
import weakref
from typing import Any

log = logging.getLogger(__name__)


def limit_connections(demo: Any, *, max_connections: int, header_timeout_s: float, keep_alive_s: float) -> None:
    """Bound ``demo``'s server: connections and tasks, idle keep-alive, and the time to send a request."""
    server = demo.server
    config = server.config
    config.limit_concurrency = max_connections  # beyond it, new requests get 503 at once
    config.timeout_keep_alive = keep_alive_s
    config.h11_max_incomplete_event_size = 16 * 1024  # request line and headers (uvicorn's default, made explicit)
    reaper = threading.Thread(target=_reap, args=(server, header_timeout_s), name="idle-connection reaper", daemon=True)
    reaper.start()


# Gradio's queue looks for waiting events every millisecond, whether there are any or not: about 5 % of a
# core at rest, and on a CPU a wake-up every millisecond taken from the model's threads while a reply
# streams. Every 5 ms, an event waits at most 5 ms more to start (Gradio itself waits 50 ms on Windows).
QUEUE_POLL_S = 0.005


def trim_overheads(demo: Any) -> None:
    """Cut what Gradio spends on every event, and at rest, that this app has no use for (after ``launch``)."""
    demo._queue.sleep_when_free = QUEUE_POLL_S
    # Gradio wraps every step of every event (each streamed update) in a switch of matplotlib's backend,
    # importing it twice; where matplotlib is not installed, each failed import searches the whole path
    # again. Recorded as absent, the import fails at once, as it would anyway.
    if importlib.util.find_spec("matplotlib") is None:
        sys.modules.setdefault("matplotlib", None)  # type: ignore[arg-type]
    # Every new session (each page load, each API call) copies the config of every block on the page,
    # and each copy asks ``inspect.signature`` of the block's class ``__init__`` afresh: half of about
    # 30 ms of the server's loop per request. A signature stored as ``__signature__`` is what
    # ``inspect.signature`` returns at once (PEP 362); it is the same value, computed once.
    for cls in {type(block) for block in demo.blocks.values()}:
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if inspect.isfunction(init) and "__signature__" not in init.__dict__:
                init.__signature__ = inspect.signature(init)  # type: ignore[attr-defined]
    lean_sessions(demo)
    if not demo.enable_monitoring:
        # Gradio recomputes its dashboard's summary after every event, a pandas frame of up to 10,000 past
        # events with percentiles per function: 4 % of the test suite's CPU, and more as the record grows.
        # Only the dashboard reads it, and it is off: the summary Gradio began with stands.
        queue = demo._queue
        queue.compute_analytics_summary = lambda records: queue.cached_event_analytics_summary


class _Unlisted:
    """What Gradio's ``SessionState`` reads of the app when it begins, with no block listed in it."""

    def __init__(self, blocks: Any) -> None:
        self.default_config = blocks.default_config
        self.blocks: dict[int, Any] = {}


def lean_sessions(demo: Any) -> None:
    """Begin each session without a copy of every block's config.

    Gradio copies the config of all the page's blocks (about 130) into every new session: each page
    load and each API call, where every call is a session of its own. Relaying 25 replies through
    ``/call/chat``, those copies took a fifth of the server's loop, and they are most of what a
    session holds. Only Gradio's deep links read them, which this app does not offer (the guard
    refuses the route); a block an event changes still gets its config updated, as before.
    """
    from gradio.state_holder import SessionState, StateHolder

    class LeanStateHolder(StateHolder):
        def __getitem__(self, session_id: str) -> SessionState:
            if session_id not in self.session_data:
                self.session_data[session_id] = SessionState(_Unlisted(self.blocks))  # type: ignore[arg-type]
            return super().__getitem__(session_id)

    holder = demo.state_holder
    if type(holder) is StateHolder:
        holder.__class__ = LeanStateHolder


def _reap(server: Any, timeout_s: float) -> None:
    """Close connections with no request in progress for ``timeout_s`` (half-open, or never finishing headers)."""
    idle_since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
    while not getattr(server, "should_exit", False):
        time.sleep(min(1.0, timeout_s / 2))
        state = getattr(server, "server_state", None)
        if state is None:
            continue
        now = time.monotonic()
        try:
            connections = list(state.connections)
        except RuntimeError:  # changed while copied (the server's loop runs in another thread): next round
            continue
        closed = 0
        for protocol in connections:
            cycle = getattr(protocol, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                idle_since.pop(protocol, None)  # a request in progress (a streamed reply included)
                continue
            since = idle_since.setdefault(protocol, now)
            transport = getattr(protocol, "transport", None)
            if now - since > timeout_s and transport is not None and not transport.is_closing():
                protocol.loop.call_soon_threadsafe(transport.close)
                closed += 1
        if closed:
            log.info("closed %d idle connections", closed)
