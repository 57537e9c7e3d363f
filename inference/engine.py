"""The one interface between the UI and the backends: messages in, text out."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from inference.prompts import Message, conversation
from inference.registry import ModelSpec, Registry
from inference.sampling import SamplingOptions


class Backend(Protocol):
    """Something that can run a model; it blocks, and is called off the event loop."""

    def generate(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
    ) -> None: ...


# Updates after the first are merged over this window. At tens of ms a reader
# sees no stutter, while the web layer's per-message cost (a few ms of CPU on
# the same cores that generate) is paid tens of times a second, not per token.
FLUSH_INTERVAL_S = 0.05


class _Mailbox:
    """Text handed from the generating thread to the event loop.

    The worker only appends; it wakes the loop only when the loop is idle
    waiting for text, so a fast model costs the loop one wake-up per flush,
    not one per token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._waiting = False
        self._wake = asyncio.Event()
        self.done = False
        self.error: BaseException | None = None

    def put(self, text: str) -> None:
        """Called from the worker thread."""
        with self._lock:
            self._parts.append(text)
            self._signal()

    def close(self, error: BaseException | None = None) -> None:
        """Called from the worker thread when generation has ended."""
        with self._lock:
            self.error = error
            self.done = True
            self._signal()

    def _signal(self) -> None:
        if self._waiting:
            self._waiting = False
            self._loop.call_soon_threadsafe(self._wake.set)

    async def wait(self) -> None:
        """Return once there is text or the worker has finished."""
        with self._lock:
            if self._parts or self.done:
                return
            self._waiting = True
            self._wake.clear()
        await self._wake.wait()

    def take(self) -> str:
        with self._lock:
            text, self._parts = "".join(self._parts), []
            return text


class Inference:
    """Streams replies from the registry's models through a backend."""

    def __init__(self, registry: Registry, backend: Backend, *, flush_interval: float = FLUSH_INTERVAL_S) -> None:
        self.registry = registry
        self.backend = backend
        self.flush_interval = flush_interval
        # All model work runs on one long-lived thread. PyTorch's CPU kernels
        # run about a third slower on any thread other than the first that
        # used them (each thread gets its own OpenMP team, and they compete),
        # so a thread per request would cost that on every reply. Requests
        # wait their turn here in arrival order.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    async def stream(
        self,
        model_id: str,
        history: Sequence[Message],
        message: str,
        options: SamplingOptions,
    ) -> AsyncIterator[str]:
        """Yield the reply to ``message`` as text deltas that join to the whole reply.

        Generation runs on the worker thread. Closing or cancelling this iterator
        (the stop button, a client going away) stops generation at its next
        token step. The first text is yielded at once; later text is merged
        over ``flush_interval`` seconds.
        """
        spec = self.registry.get(model_id)
        messages = conversation(spec.prompt_format, history, message)
        loop = asyncio.get_running_loop()
        mailbox = _Mailbox(loop)
        stop = threading.Event()

        def work() -> None:
            try:
                if not stop.is_set():  # cancelled while waiting its turn: skip it
                    self.backend.generate(spec, messages, options, mailbox.put, stop)
            except BaseException as exc:  # handed to the consumer, re-raised there
                mailbox.close(exc)
            else:
                mailbox.close()

        self._worker.submit(work)
        try:
            last = -math.inf
            while True:
                await mailbox.wait()
                delay = last + self.flush_interval - loop.time()
                if delay > 0 and not mailbox.done:
                    await asyncio.sleep(delay)
                done = mailbox.done
                if text := mailbox.take():
                    yield text
                    last = loop.time()
                if done:
                    if mailbox.error is not None:
                        raise mailbox.error
                    return
        finally:
            stop.set()
