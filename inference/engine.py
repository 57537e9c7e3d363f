"""The one interface between the UI and the backends: messages in, text out."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from inference.lanes import Lane, LeftQueue, Seat
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
    Once ``make_room`` is set, it may end the reply early (finish reason
    ``shared``) so that waiting visitors get the model's place.
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
        make_room: threading.Event | None = None,
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
    starts (``spec.engine``: ``inference.servers.engines``). Every lane queues at most ``max_queue``
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
        who: tuple[str, str] = ("", ""),
    ) -> AsyncIterator[str | Status]:
        """Yield the reply to ``message`` as text deltas that join to the whole reply.

        Before the first text it may yield a ``Status``: download or load
        progress, ``Trimmed`` when the oldest turns did not fit the context,
        the queue position, a wait for memory. Last, on every normal end, it
        yields ``Finished``. Setting ``stop`` (owned by the caller) leaves the
        queue, or ends generation within one token step; closing or
        cancelling this iterator does the same. ``who`` (client address,
        identity; opaque keys) is whom the model's places are shared between.
        The first text is yielded at once; later text is merged over
        ``flush_interval`` seconds.
        """
        spec = self.registry.get(model_id)
        reply = _Reply(self, spec, conversation(spec.prompt_format, history, message), options, stop, who)
        try:
            async for item in reply.run():
                yield item
        finally:
            reply.end()


class _Reply:
    """One request's whole life: prepared, queued, generated, and each thing it held given back once.

    What it holds, and until when: the model (from ``prepare`` until the
    generation has really ended, even when the visitor leaves early) and a
    place in the model's lane (from admission until the same moment). Both
    are given back by ``_ended``, on whichever thread sees the work end.
    """

    def __init__(
        self,
        engine: Inference,
        spec: ModelSpec,
        messages: list[Message],
        options: SamplingOptions,
        stop: threading.Event | None,
        who: tuple[str, str],
    ) -> None:
        self.engine, self.spec, self.messages, self.options = engine, spec, messages, options
        self.backend = engine._backend(spec)
        self.stop = _Stop(stop)
        self.seat = Seat(*who)
        self.started = time.monotonic()
        self.prompt: Prompt | None = None
        self.outcome: Outcome | None = None
        self._preparing: Future[Prompt] | None = None
        self._lane: Lane | None = None
        self._working = False

    def finished(self) -> Finished:
        prompt = self.prompt
        outcome = self.outcome or Outcome(len(prompt.ids) if prompt else 0, 0, "cancelled")
        return Finished(
            model_id=self.spec.id,
            revision=outcome.revision or self.spec.revision,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            seconds=time.monotonic() - self.started,
            finish_reason=outcome.finish_reason,
            dropped_turns=prompt.dropped_turns if prompt else 0,
            prompt_text=prompt.text if prompt else None,
        )

    async def run(self) -> AsyncIterator[str | Status]:
        loop = asyncio.get_running_loop()
        # 1. The model made ready and the prompt prepared, before the lane, on a thread of the
        # preparation pool: a visitor waiting for a download never holds up a loaded model's visitors.
        mailbox = _Mailbox(loop)
        self._preparing = self.engine._prepare.submit(
            self.backend.prepare, self.spec, self.messages, self.options, report=mailbox.report
        )
        self._preparing.add_done_callback(lambda _: mailbox.close())
        while not mailbox.done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(mailbox.wait(), STOP_POLL_S)
            if status := mailbox.take_status():
                yield status
            if self.stop.is_set() and not mailbox.done:
                yield self.finished()
                return
        if status := mailbox.take_status():
            yield status
        self.prompt = self._preparing.result()
        if self.prompt.dropped_turns:
            yield Trimmed(self.prompt.dropped_turns)

        # 2. A place in the model's lane, shared fairly between callers.
        lane = self.engine.lane(self.spec)
        try:
            async for position in lane.turn(self.stop, self.seat):
                yield Queued(position)
        except LeftQueue:
            yield self.finished()
            return
        self._lane = lane

        # 3. Generation on the backend's own thread (a loaded model's loop, or a remote stream);
        # one waiter thread relays its end, and the text goes through the mailbox.
        mailbox = _Mailbox(loop)
        prompt = self.prompt

        def work() -> None:
            try:
                if not self.stop.is_set():
                    self.outcome = self.backend.generate(
                        self.spec, prompt, self.options, mailbox.put, self.stop,
                        report=mailbox.report, make_room=self.seat.make_room,
                    )  # fmt: skip
            except BaseException as exc:  # handed to the consumer, re-raised there
                mailbox.close(exc)
            else:
                mailbox.close()
            finally:
                loop.call_soon_threadsafe(self._ended)

        self._working = True
        try:
            self.engine._waiters.submit(work)
        except BaseException:
            self._working = False
            raise
        last = -math.inf
        while True:
            await mailbox.wait()
            if status := mailbox.take_status():
                yield status
            delay = last + self.engine.flush_interval - loop.time()
            if delay > 0 and not mailbox.done:
                await asyncio.sleep(delay)
            done = mailbox.done
            if text := mailbox.take():
                yield text
                last = loop.time()
            if done:
                if mailbox.error is not None:
                    raise mailbox.error
                yield self.finished()
                return

    def end(self) -> None:
        """The consumer is done (finished, failed or gone): stop the work; what it holds is given back when it ends."""
        self.stop.set()
        if not self._working:
            self._ended()

    def _ended(self) -> None:
        """The work has really ended (or never began): give back the lane's place and the model, once each."""
        if self._lane is not None:
            self._lane.release(self.seat)
            self._lane = None
        preparing, self._preparing = self._preparing, None
        if preparing is not None:
            preparing.add_done_callback(self._let_go)

    def _let_go(self, preparing: Future[Prompt]) -> None:
        if preparing.exception() is None:
            self.backend.release(self.spec)
