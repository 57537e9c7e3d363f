"""Per-caller limits: request rates, and how many replies one caller may have waiting or running."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from inference.errors import AppError
from webapp.gate.identity import Caller


class TooManyRequests(AppError):
    """The caller went over a rate limit; nothing was done."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"リクエストが多すぎます。{retry_after} 秒後にもう一度お試しください。",
            f"Too many requests. Please try again in {retry_after} s.",
        )
        self.retry_after = retry_after


class TooManyReplies(AppError):
    """The caller already has as many replies waiting or running as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"同時に生成できる返答は {limit} 件までです。前の返答が終わるか停止してから送信してください。",
            f"At most {limit} replies may be waiting or running at once. Wait for one to finish, or stop it.",
        )
        self.limit = limit


@dataclass(frozen=True)
class Rates:
    """One action's limits, in the ``limits`` notation (``"20/minute"``, ``"5/second;100/hour"``)."""

    per_caller: str
    per_address: str


class RateLimits:
    """Moving-window limits per caller (identity, or address when there is none) and per client address.

    Kept in this process's memory: each replica limits on its own, which is
    what a flood from one source meets anyway behind sticky load balancing.
    """

    def __init__(self, actions: dict[str, Rates]) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[str, tuple[list[RateLimitItem], list[RateLimitItem]]] = {
            action: (_parse(rates.per_caller), _parse(rates.per_address)) for action, rates in actions.items()
        }

    def check(self, action: str, caller: Caller) -> None:
        """Count one ``action`` by ``caller``; raise ``TooManyRequests`` with a retry time when over a limit."""
        per_caller, per_address = self._items[action]
        keys = [(item, "caller", caller.limit_key) for item in per_caller]
        if caller.client_hash:
            keys += [(item, "address", caller.client_hash) for item in per_address]
        over = [(item, scope, key) for item, scope, key in keys if not self._limiter.hit(item, action, scope, key)]
        if over:
            reset = max(
                self._limiter.get_window_stats(item, action, scope, key).reset_time for item, scope, key in over
            )
            raise TooManyRequests(max(1, math.ceil(reset - time.time())))


def _parse(spec: str) -> list[RateLimitItem]:
    return parse_many(spec) if spec else []


@dataclass(eq=False)  # held in sets by identity
class Ticket:
    """One reply's place among its caller's: the event that stops it, and whether a withdrawal did."""

    stop: threading.Event = field(default_factory=threading.Event)
    withdrawn: bool = False


class InFlight:
    """Replies waiting or running, per identity and per client address, each with the event that stops it.

    Bounds what one caller can hold of the model queues, and lets a
    withdrawal of consent stop that identity's replies at once.
    """

    def __init__(self, *, per_identity: int, per_address: int) -> None:
        self.per_identity = per_identity
        self.per_address = per_address
        self._lock = threading.Lock()
        self._tickets: dict[str, set[Ticket]] = {}
        self._addresses: Counter[str] = Counter()

    @contextmanager
    def hold(self, caller: Caller) -> Iterator[Ticket]:
        """A slot for one reply of ``caller``; ``TooManyReplies`` when none is free."""
        key, address = caller.limit_key, caller.client_hash
        ticket = Ticket()
        with self._lock:
            if len(self._tickets.get(key, ())) >= self.per_identity:
                raise TooManyReplies(self.per_identity)
            if address and self._addresses[address] >= self.per_address:
                raise TooManyReplies(self.per_address)
            self._tickets.setdefault(key, set()).add(ticket)
            if address:
                self._addresses[address] += 1
        try:
            yield ticket
        finally:
            with self._lock:
                held = self._tickets.get(key, set())
                held.discard(ticket)
                if not held:
                    self._tickets.pop(key, None)
                if address:
                    self._addresses[address] -= 1
                    if self._addresses[address] <= 0:
                        del self._addresses[address]

    def cancel(self, identity: str) -> int:
        """Stop every reply of ``identity``, waiting or running; returns how many."""
        with self._lock:
            tickets = list(self._tickets.get(identity, ()))
        for ticket in tickets:
            ticket.withdrawn = True
            ticket.stop.set()
        return len(tickets)
