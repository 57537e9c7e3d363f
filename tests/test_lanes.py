"""The queue in front of each model server: arrival order, visible positions, a bound, and leaving it."""

from __future__ import annotations

import asyncio

import pytest

from inference.errors import Busy
from inference.lanes import Lane, Seat


async def enter(lane: Lane, name: str, log: list[tuple[str, int]]) -> None:
    """Wait for a turn, logging each position shown, then hold the slot until told to release."""
    async for position in lane.turn():
        log.append((name, position))
    log.append((name, 0))  # admitted


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_run_in_arrival_order_and_see_their_place() -> None:
    async def scenario() -> list[tuple[str, int]]:
        lane, log = Lane(capacity=1, bound=5), []
        tasks = []
        for name in "ABCD":
            tasks.append(asyncio.create_task(enter(lane, name, log)))
            await settle()
        assert lane.running == 1 and lane.waiting == 3
        for _ in range(3):
            lane.release()
            await settle()
        await asyncio.gather(*tasks)
        return log

    log = asyncio.run(scenario())
    assert [name for name, position in log if position == 0] == list("ABCD")  # first come, first served
    assert [position for name, position in log if name == "D"] == [3, 2, 1, 0]  # D watched its place move up


def test_past_the_bound_a_request_is_refused_at_once() -> None:
    async def scenario() -> None:
        lane, log = Lane(capacity=1, bound=2), []
        tasks = [asyncio.create_task(enter(lane, n, log)) for n in "ABC"]
        await settle()
        assert lane.waiting == 2
        with pytest.raises(Busy, match=r"混み合っています.*busy"):
            async for _ in lane.turn():
                pytest.fail("a refused request must not be queued")
        assert lane.waiting == 2  # the refused one left no trace
        for _ in range(2):
            lane.release()
            await settle()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_leaving_the_queue_moves_everyone_behind_up() -> None:
    async def scenario() -> list[tuple[str, int]]:
        lane, log = Lane(capacity=1, bound=5), []
        a = asyncio.create_task(enter(lane, "A", log))
        await settle()
        b = asyncio.create_task(enter(lane, "B", log))
        await settle()
        c = asyncio.create_task(enter(lane, "C", log))
        await settle()
        b.cancel()  # B's visitor pressed stop while waiting
        await settle()
        assert lane.waiting == 1
        lane.release()
        await settle()
        await asyncio.gather(a, c)
        return log

    log = asyncio.run(scenario())
    assert [p for n, p in log if n == "C"] == [2, 1, 0]
    assert ("B", 0) not in log


def test_a_batching_server_runs_several_at_once() -> None:
    async def scenario() -> Lane:
        lane, log = Lane(capacity=3, bound=0), []
        for n in "ABC":
            await enter(lane, n, log)  # all admitted without waiting
        assert log == [("A", 0), ("B", 0), ("C", 0)]
        with pytest.raises(Busy):  # bound 0: no waiting at all
            await enter(lane, "D", log)
        return lane

    assert asyncio.run(scenario()).running == 3


def test_four_busy_addresses_cannot_shut_out_a_fifth_visitor() -> None:
    """Four addresses holding all they may (6 each: 8 running, 16 waiting); a fifth is queued and served."""

    async def main() -> None:
        lane = Lane(capacity=8, bound=16)
        seats: dict[str, list[Seat]] = {}
        outcomes: dict[str, str] = {}

        async def visitor(name: str, address: str) -> None:
            seat = Seat(address, f"id-{name}")
            seats.setdefault(address, []).append(seat)
            try:
                async for _ in lane.turn(seat=seat):
                    pass
            except Busy:
                outcomes[name] = "busy"
                return
            outcomes[name] = "running"
            # A long reply: it runs until asked to make room (the batcher ends it at its fair share).
            while not seat.make_room.is_set() and name != "fifth":
                await asyncio.sleep(0.01)
            outcomes[name] = "made room" if name != "fifth" else "served"
            lane.release(seat)

        tasks = [asyncio.create_task(visitor(f"{a}{i}", a)) for a in "ABCD" for i in range(6)]
        await settle()
        assert lane.running == 8 and lane.waiting == 16
        fifth = asyncio.create_task(visitor("fifth", "E"))
        await asyncio.wait_for(fifth, 5)
        assert outcomes["fifth"] == "served"
        # It took the place of a busiest address's newest waiting request, and one long reply made room.
        assert list(outcomes.values()).count("busy") == 1
        assert list(outcomes.values()).count("made room") >= 1
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_places_go_round_the_addresses_waiting() -> None:
    """With one place, waiting requests are served one address after another, not in arrival order."""

    async def main() -> None:
        lane = Lane(capacity=1, bound=10)
        order: list[str] = []
        gate = asyncio.Event()

        async def visitor(address: str) -> None:
            seat = Seat(address, address)
            async for _ in lane.turn(seat=seat):
                pass
            order.append(address)
            await gate.wait()
            lane.release(seat)

        first = asyncio.create_task(visitor("A"))
        await settle()
        rest = [asyncio.create_task(visitor(a)) for a in "AAAB"]
        await settle()
        gate.set()
        await asyncio.gather(first, *rest)
        assert order[:3] == ["A", "B", "A"]

    asyncio.run(main())
