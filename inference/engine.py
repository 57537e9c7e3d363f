"""The one interface between the UI and the backends: messages in, text out."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from inference.lanes import Lane
from inference.progress import Finished, Queued, Status
from inference.prompts import Message, conversation
from inference.registry import ModelSpec, Registry
from inference.sampling import SamplingOptions


class Backend(Protocol):
    """Something that can run a model; it blocks, and is called off the event loop.

    ``emit`` takes each text delta; ``report`` takes what the request is
    waiting for (a download, a load) before its first token; once ``stop`` is
    set, the backend returns within one token step.
    """

    def generate(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
        *,
        report: Callable[[Status], None] | None = None,
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
        self._status: Status | None = None
        self.done = False
        self.error: BaseException | None = None

    def put(self, text: str) -> None:
        """Called from the worker thread."""
        with self._lock:
            self._parts.append(text)
            self._signal()

    def report(self, status: Status) -> None:
        """Called from the worker thread; only the latest status is kept."""
        with self._lock:
            self._status = status
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
            if self._parts or self.done or self._status:
                return
            self._waiting = True
            self._wake.clear()
        await self._wake.wait()

    def take(self) -> str:
        with self._lock:
            text, self._parts = "".join(self._parts), []
            return text

    def take_status(self) -> Status | None:
        with self._lock:
            status, self._status = self._status, None
            return status


class Inference:
    """Streams replies from the registry's models, each through its backend and lane.

    Models served here share one lane of capacity 1 and one long-lived thread;
    each remote server (``spec.endpoint``) has its own lane, ``remote_concurrency``
    wide, since it batches requests itself. Every lane queues at most
    ``max_queue`` requests in arrival order and refuses more with ``Busy``.
    """

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        *,
        remote: Backend | None = None,
        max_queue: int = 16,
        remote_concurrency: int = 16,
        flush_interval: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.remote = remote
        self.max_queue = max_queue
        self.remote_concurrency = remote_concurrency
        self.flush_interval = flush_interval
        # All local model work runs on one long-lived thread. PyTorch's CPU
        # kernels run about a third slower on any thread other than the first
        # that used them (each thread gets its own OpenMP team, and they
        # compete), so a thread per request would cost that on every reply.
        self._local = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        # Remote requests only wait on the network: a thread each, bounded by the lanes.
        self._network = ThreadPoolExecutor(max_workers=64, thread_name_prefix="remote")
        self._lanes: dict[str, Lane] = {}

    def lane(self, spec: ModelSpec) -> Lane:
        """The queue ``spec``'s requests wait in."""
        key = spec.endpoint.base_url if spec.endpoint else "local"
        if key not in self._lanes:
            capacity = self.remote_concurrency if spec.endpoint else 1
            self._lanes[key] = Lane(capacity, self.max_queue)
        return self._lanes[key]

    def _backend(self, spec: ModelSpec) -> tuple[Backend, ThreadPoolExecutor]:
        if spec.endpoint is None:
            return self.backend, self._local
        if self.remote is None:
            raise ValueError(f"{spec.id} points at {spec.endpoint.base_url} but no remote backend is configured")
        return self.remote, self._network

    async def stream(
        self,
        model_id: str,
        history: Sequence[Message],
        message: str,
        options: SamplingOptions,
        *,
        stop: threading.Event | None = None,
    ) -> AsyncIterator[str | Status]:
        """Yield the reply to ``message`` as text deltas that join to the whole reply.

        Before the first text it may yield a ``Status``: the queue position,
        download or load progress. Generation runs on a worker thread. Closing
        or cancelling this iterator (the stop button, a client going away)
        leaves the queue, or stops generation at its next token step; so does
        setting ``stop``, which the caller owns (a withdrawal of consent stops
        every reply of that visitor). The first text is yielded at once; later
        text is merged over ``flush_interval`` seconds.
        """
        spec = self.registry.get(model_id)
        messages = conversation(spec.prompt_format, history, message)
        backend, executor = self._backend(spec)
        lane = self.lane(spec)
        stop = stop or threading.Event()
        wait = _Wait(lane.turn(), stop)
        async for position in wait.positions():
            yield Queued(position)
        if not wait.admitted:
            return  # stopped before its turn came; it never held a slot

        loop = asyncio.get_running_loop()
        mailbox = _Mailbox(loop)

        def work() -> None:
            try:
                if not stop.is_set():  # stopped before its turn came: skip it
                    backend.generate(spec, messages, options, mailbox.put, stop, report=mailbox.report)
            except BaseException as exc:  # handed to the consumer, re-raised there
                mailbox.close(exc)
            else:
                mailbox.close()

        try:
            job = executor.submit(work)
        except BaseException:
            lane.release()
            raise
        # The slot is given back when the work has really ended, not when the
        # consumer leaves: a stopped request holds it until its last token step.
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(lane.release))
        started = loop.time()
        try:
            last = -math.inf
            while True:
                await mailbox.wait()
                if status := mailbox.take_status():
                    yield status
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
                    # Token counts and the finish reason are not known here: zero and "stop".
                    yield Finished(spec.id, None, 0, 0, loop.time() - started, "stop", 0)
                    return
        finally:
            stop.set()


# How often a request waiting in a lane looks at its stop event.
_STOP_POLL_S = 0.05


class _Wait:
    """Waiting for a lane's turn that a caller-owned stop event can abandon."""

    def __init__(self, turn: AsyncIterator[int], stop: threading.Event) -> None:
        self.turn = turn
        self.stop = stop
        self.admitted = False
        """True once the request holds a slot (which its work then releases)."""

    async def positions(self) -> AsyncIterator[int]:
        """The queue positions; ends when admitted, or when ``stop`` is set (leaving the queue)."""
        step: asyncio.Future[int] | None = None
        try:
            while not self.stop.is_set():
                step = asyncio.ensure_future(anext(self.turn))
                while not step.done() and not self.stop.is_set():
                    await asyncio.wait({step}, timeout=_STOP_POLL_S)
                if not step.done():
                    return  # stopped while waiting: the finally below leaves the queue
                try:
                    position = step.result()
                except StopAsyncIteration:
                    self.admitted = True
                    return
                yield position
        finally:
            if step is not None and not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            if not self.admitted:
                await self.turn.aclose()
