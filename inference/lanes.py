"""Fair, bounded queues in front of each model server.

A lane admits ``capacity`` requests at a time (one for this machine's GPU,
more for a vLLM server that batches) and queues the rest in arrival order,
at most ``bound`` of them; past that it refuses at once with ``Busy``. A
waiting request can see its position move. All of it runs on the event
loop, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from inference.errors import Busy


class LeftQueue(Exception):
    """The request's stop event was set while it waited: it has left the queue."""


# A stop event is set from other threads; a waiting request looks at it this often.
STOP_POLL_S = 0.05


class Lane:
    """Requests to one server, ``capacity`` at a time, the rest waiting in order."""

    def __init__(self, capacity: int, bound: int) -> None:
        if capacity < 1 or bound < 0:
            raise ValueError("a lane needs capacity >= 1 and bound >= 0")
        self.capacity = capacity
        self.bound = bound
        self.running = 0
        self._waiting: list[object] = []
        self._moved: asyncio.Event | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting for a turn."""
        return len(self._waiting)

    def _notify(self) -> None:
        # Wake every waiter to look at its position again; each waits on the
        # event that was current when it looked, so none misses a move.
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    def _event(self) -> asyncio.Event:
        if self._moved is None:
            self._moved = asyncio.Event()
        return self._moved

    async def turn(self, stop: threading.Event | None = None) -> AsyncIterator[int]:
        """Wait for a turn, yielding the 1-based queue position each time it changes.

        Returns once the request holds a slot, which ``release`` gives back.
        Raises ``Busy`` at once when ``bound`` requests are already waiting.
        Closing or cancelling the iterator while waiting leaves the queue; so
        does setting ``stop``, which then raises ``LeftQueue``.
        """
        if stop is not None and stop.is_set():
            raise LeftQueue
        if self.running < self.capacity and not self._waiting:
            self.running += 1
            return
        if len(self._waiting) >= self.bound:
            raise Busy(len(self._waiting))
        ticket = object()
        self._waiting.append(ticket)
        admitted = False
        try:
            shown = 0
            while True:
                position = self._waiting.index(ticket) + 1
                if position == 1 and self.running < self.capacity:
                    break
                moved = self._event()
                if position != shown:
                    shown = position
                    yield position
                if stop is None:
                    await moved.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(moved.wait(), STOP_POLL_S)
                if stop.is_set():
                    raise LeftQueue
            self._waiting.remove(ticket)
            self.running += 1
            admitted = True
        finally:
            if not admitted:
                self._waiting.remove(ticket)
            self._notify()  # everyone behind moves up (or the next may start)

    def release(self) -> None:
        """Give a slot back; the first waiter takes it."""
        self.running -= 1
        self._notify()
