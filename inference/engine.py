"""The one interface between the UI and the backends: messages in, text out."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from inference.prompts import Message, conversation
from inference.registry import ModelSpec, Registry
from inference.sampling import SamplingOptions

_DONE = object()


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


class Inference:
    """Streams replies from the registry's models through a backend."""

    def __init__(self, registry: Registry, backend: Backend) -> None:
        self.registry = registry
        self.backend = backend

    async def stream(
        self,
        model_id: str,
        history: Sequence[Message],
        message: str,
        options: SamplingOptions,
    ) -> AsyncIterator[str]:
        """Yield the reply to ``message`` as text deltas that join to the whole reply.

        Generation runs on a worker thread. Closing or cancelling this iterator
        (the stop button, a client going away) stops generation at its next
        token step. Deltas that pile up while the consumer is busy are merged,
        so a slow client gets fewer, larger messages, never a backlog.
        """
        spec = self.registry.get(model_id)
        messages = conversation(spec.prompt_format, history, message)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self.backend.generate(spec, messages, options, put, stop)
            except BaseException as exc:  # handed to the consumer, re-raised there
                put(exc)
            finally:
                put(_DONE)

        worker = threading.Thread(target=work, name=f"generate-{model_id}", daemon=True)
        worker.start()
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                text = "".join(i for i in items if isinstance(i, str))
                if text:
                    yield text
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                if _DONE in items:
                    return
        finally:
            stop.set()
