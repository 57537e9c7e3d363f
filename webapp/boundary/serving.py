"""The web server's own limits against held-open connections.

Gradio starts uvicorn itself and passes none of its limits through
``launch()``. uvicorn reads them from its config for each new connection, so
they are set on the running server's config right after the launch. uvicorn
has no deadline for a request's headers: a connection that sends a partial
request (or nothing) is held until the client closes it. A small reaper
closes connections that have had no request in progress for longer than the
header deadline; replies being streamed are never touched.
"""

from __future__ import annotations

import logging
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
