"""Fair, bounded queues in front of each model server.

A lane admits ``capacity`` requests at a time (a batch on this machine's
model, more for a vLLM server) and queues at most ``bound`` more. Places go
round the callers waiting rather than first come, first served: the next
place goes to the waiting request whose client address holds the fewest
places, then has had the fewest, then whose identity holds the fewest
(arrival order among equals). So a few callers cannot shut others out:

- when the queue is full, a newcomer from an address holding fewer requests
  than the busiest one takes the place of that address's newest waiting
  request, which is told the model is busy; only a newcomer whose address
  already holds as much as any other is refused;
- when every place is taken and a waiting request's address holds at least
  two places fewer than the busiest address, one running reply of that
  address is asked to make room (``Seat.make_room``): it ends early, once it
  has a fair share of tokens, and says so.

All of it runs on the event loop, so it needs no locks; ``make_room`` is a
``threading.Event`` because the generating thread reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from inference.errors import Busy


class LeftQueue(Exception):
    """The request's stop event was set while it waited: it has left the queue."""


# A stop event is set from other threads; a waiting request looks at it this often.
STOP_POLL_S = 0.05

_arrivals = itertools.count()


@dataclass(eq=False)
class Seat:
    """One request's claim on a lane: who it is for, and the flag that asks its reply to make room."""

    address: str = ""
    identity: str = ""
    make_room: threading.Event = field(default_factory=threading.Event)
    arrival: int = field(default_factory=lambda: next(_arrivals))
    bumped: bool = False


class Lane:
    """Requests to one server, ``capacity`` at a time, the rest waiting their fair turn."""

    def __init__(self, capacity: int, bound: int) -> None:
        if capacity < 1 or bound < 0:
            raise ValueError("a lane needs capacity >= 1 and bound >= 0")
        self.capacity = capacity
        self.bound = bound
        self._running: list[Seat] = []
        self._waiting: list[Seat] = []
        # Places each address has had while it kept requests here: with one place free and nobody
        # running, the address served least goes first (forgotten once it holds nothing).
        self._served: Counter[str] = Counter()
        self._moved: asyncio.Event | None = None

    @property
    def running(self) -> int:
        """Requests holding a place."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests waiting for a place."""
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

    def _order(self) -> list[Seat]:
        """The waiting requests in the order they will get places."""
        by_address = Counter(s.address for s in self._running)
        by_identity = Counter(s.identity for s in self._running)
        served = self._served
        return sorted(
            self._waiting,
            key=lambda s: (by_address[s.address], served[s.address], by_identity[s.identity], s.arrival),
        )

    def _held(self, address: str) -> int:
        return sum(s.address == address for s in (*self._running, *self._waiting))

    def _make_room(self) -> None:
        """Ask one running reply to end early when a waiting caller holds far fewer places than the busiest."""
        if not self._waiting or len(self._running) < self.capacity:
            return
        if any(s.make_room.is_set() for s in self._running):
            return  # one reply is already making room
        by_address = Counter(s.address for s in self._running)
        first = self._order()[0]
        busiest, most = by_address.most_common(1)[0]
        if most >= by_address[first.address] + 2:
            victim = min((s for s in self._running if s.address == busiest), key=lambda s: s.arrival)
            victim.make_room.set()

    def _admit_or_refuse(self, seat: Seat) -> None:
        """Join the queue, taking the place of the busiest address's newest request when it is full."""
        if len(self._waiting) >= self.bound:
            held = {s.address: self._held(s.address) for s in self._waiting}
            busiest = max(held, key=lambda a: held[a], default=None)
            if busiest is None or held[busiest] <= self._held(seat.address) + 1:
                raise Busy(len(self._waiting))
            bumped = max((s for s in self._waiting if s.address == busiest), key=lambda s: s.arrival)
            bumped.bumped = True
            self._waiting.remove(bumped)
            self._notify()  # the bumped request wakes to hear that the model is busy
        self._waiting.append(seat)

    async def turn(self, stop: threading.Event | None = None, seat: Seat | None = None) -> AsyncIterator[int]:
        """Wait for a place, yielding the 1-based queue position each time it changes.

        Returns once ``seat`` holds a place, which ``release`` gives back.
        Raises ``Busy`` when the queue is full (at once, or later if a caller
        with fewer requests takes this one's place). Closing or cancelling
        the iterator while waiting leaves the queue; so does setting
        ``stop``, which then raises ``LeftQueue``.
        """
        seat = seat or Seat()
        if stop is not None and stop.is_set():
            raise LeftQueue
        if len(self._running) < self.capacity and not self._waiting:
            self._seat(seat)
            return
        self._admit_or_refuse(seat)
        admitted = False
        try:
            shown = 0
            while True:
                if seat.bumped:
                    raise Busy(len(self._waiting))
                self._make_room()
                position = self._order().index(seat) + 1
                if position == 1 and len(self._running) < self.capacity:
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
            self._waiting.remove(seat)
            self._seat(seat)
            admitted = True
        finally:
            if not admitted and seat in self._waiting:
                self._waiting.remove(seat)
                self._forget(seat.address)
            self._notify()  # everyone behind moves up (or the next may start)

    def _seat(self, seat: Seat) -> None:
        self._running.append(seat)
        self._served[seat.address] += 1

    def _forget(self, address: str) -> None:
        if not self._held(address):
            self._served.pop(address, None)

    def release(self, seat: Seat | None = None) -> None:
        """Give a place back; the first waiter in turn takes it."""
        if seat is None or seat not in self._running:
            seat = self._running[0] if self._running else None
        if seat is not None:
            self._running.remove(seat)
            self._forget(seat.address)
        self._notify()
