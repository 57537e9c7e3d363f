"""The one interface between the UI and the backends: messages in, text out."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from inference.lanes import Lane, LeftQueue
from inference.progress import Finished, Outcome, Queued, Status, Trimmed
from inference.prompts import Message, Prompt, conversation
from inference.registry import ModelSpec, Registry
from inference.sampling import SamplingOptions


class Backend(Protocol):
    """Something that can run a model; it blocks, and is called off the event loop.

    ``prepare`` renders and tokenises a conversation for the model, after
    making the model ready (a download, a load: ``report`` hears them); it
    holds the model for the request until ``release``. ``generate`` streams
    the reply to a prepared prompt (or to raw messages, preparing them itself)
    into ``emit``; once ``stop`` is set, it returns within one token step.
    """

    def prepare(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        *,
        report: Callable[[Status], None] | None = None,
    ) -> Prompt: ...

    def release(self, spec: ModelSpec) -> None: ...

    def generate(
        self,
        spec: ModelSpec,
        messages: Sequence[Message] | Prompt,
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
        *,
        report: Callable[[Status], None] | None = None,
    ) -> Outcome | None: ...


# Updates after the first are merged over this window. At tens of ms a reader
# sees no stutter, while the web layer's per-message cost (a few ms of CPU on
# the same cores that generate) is paid tens of times a second, not per token.
FLUSH_INTERVAL_S = 0.05
# A caller's stop event is set from other threads; while a request waits it is looked at this often.
STOP_POLL_S = 0.05


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


class _Stop(threading.Event):
    """Set once the caller's event is set, or once this stream is closed; the caller's event is only read."""

    def __init__(self, caller: threading.Event | None) -> None:
        super().__init__()
        self._caller = caller

    def is_set(self) -> bool:
        return super().is_set() or (self._caller is not None and self._caller.is_set())


class Inference:
    """Streams replies from the registry's models, each through its backend and lane.

    Each model served here has its own lane, ``max_batch`` wide: that many of
    its requests are generated together, batched by the backend. Each remote
    server (``spec.endpoint``) has its own lane, ``remote_concurrency`` wide,
    since it batches requests itself; so does each engine process the app
    starts (``spec.engine``: ``inference.engines``). Every lane queues at most ``max_queue``
    requests in arrival order and refuses more with ``Busy``. Preparing a
    request (a download or a load of its model, rendering and tokenising its
    prompt) happens before its lane, on threads of its own, so a visitor
    waiting for a model never holds up visitors of a loaded one.
    """

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        *,
        remote: Backend | None = None,
        engines: Backend | None = None,
        max_queue: int = 16,
        max_batch: int = 8,
        remote_concurrency: int = 16,
        flush_interval: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.remote = remote
        self.engines = engines
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.remote_concurrency = remote_concurrency
        self.flush_interval = flush_interval
        # Downloads, loads and tokenising: bounded, and apart from generation.
        self._prepare = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prepare")
        # Each running request blocks one of these threads while its model's
        # own thread (or a remote server) generates: they only wait.
        self._waiters = ThreadPoolExecutor(max_workers=256, thread_name_prefix="reply")
        self._lanes: dict[str, Lane] = {}

    def lane(self, spec: ModelSpec) -> Lane:
        """The queue ``spec``'s requests wait in."""
        # An engine process batches like a remote server (vLLM): it gets a remote server's width.
        served = spec.endpoint is not None or spec.engine is not None
        key = spec.endpoint.base_url if spec.endpoint else f"engine:{spec.id}" if spec.engine else f"local:{spec.id}"
        if key not in self._lanes:
            capacity = self.remote_concurrency if served else self.max_batch
            self._lanes[key] = Lane(capacity, self.max_queue)
        return self._lanes[key]

    def _backend(self, spec: ModelSpec) -> Backend:
        if spec.endpoint is None and spec.engine is not None:
            if self.engines is None:
                raise ValueError(f"{spec.id} is to be served by an engine process but no engines are configured")
            return self.engines
        if spec.endpoint is None:
            return self.backend
        if self.remote is None:
            raise ValueError(f"{spec.id} points at {spec.endpoint.base_url} but no remote backend is configured")
        return self.remote

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

        Before the first text it may yield a ``Status``: download or load
        progress, ``Trimmed`` when the oldest turns did not fit the context,
        the queue position. Last, on every normal end, it yields ``Finished``.
        Setting ``stop`` (owned by the caller) leaves the queue, or ends
        generation within one token step; closing or cancelling this iterator
        does the same. The first text is yielded at once; later text is
        merged over ``flush_interval`` seconds.
        """
        started = time.monotonic()
        spec = self.registry.get(model_id)
        messages = conversation(spec.prompt_format, history, message)
        backend = self._backend(spec)
        stop = _Stop(stop)
        loop = asyncio.get_running_loop()

        def finished(outcome: Outcome | None, prompt: Prompt | None) -> Finished:
            outcome = outcome or Outcome(len(prompt.ids) if prompt else 0, 0, "cancelled")
            return Finished(
                model_id=spec.id,
                revision=outcome.revision or spec.revision,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                seconds=time.monotonic() - started,
                finish_reason=outcome.finish_reason,
                dropped_turns=prompt.dropped_turns if prompt else 0,
            )

        # 1. The model made ready and the prompt prepared, before the lane.
        mailbox = _Mailbox(loop)
        preparing = self._prepare.submit(backend.prepare, spec, messages, options, report=mailbox.report)
        preparing.add_done_callback(lambda _: mailbox.close())
        # The model is held for this request from here until its reply has
        # really ended, even when the visitor leaves early.
        held = True

        def let_go(_: object = None) -> None:
            if preparing.exception() is None:
                backend.release(spec)

        try:
            while not mailbox.done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(mailbox.wait(), STOP_POLL_S)
                if status := mailbox.take_status():
                    yield status
                if stop.is_set() and not mailbox.done:
                    yield finished(None, None)
                    return
            if status := mailbox.take_status():
                yield status
            prompt = preparing.result()
            if prompt.dropped_turns:
                yield Trimmed(prompt.dropped_turns)

            # 2. A place in the model's lane.
            lane = self.lane(spec)
            try:
                async for position in lane.turn(stop):
                    yield Queued(position)
            except LeftQueue:
                yield finished(None, prompt)
                return

            # 3. Generation: the backend's own thread does the work; a waiter thread relays it.
            mailbox = _Mailbox(loop)
            outcome: list[Outcome | None] = []

            def work() -> None:
                try:
                    if not stop.is_set():
                        outcome.append(
                            backend.generate(spec, prompt, options, mailbox.put, stop, report=mailbox.report)
                        )
                except BaseException as exc:  # handed to the consumer, re-raised there
                    mailbox.close(exc)
                else:
                    mailbox.close()

            try:
                job = self._waiters.submit(work)
            except BaseException:
                lane.release()
                raise
            # The slot and the model are given back when the work has really
            # ended, not when the consumer leaves.
            held = False
            job.add_done_callback(lambda _: (loop.call_soon_threadsafe(lane.release), let_go()))
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
                        yield finished(outcome[0] if outcome else None, prompt)
                        return
            finally:
                stop.set()
        finally:
            if held:
                stop.set()
                preparing.add_done_callback(let_go)
