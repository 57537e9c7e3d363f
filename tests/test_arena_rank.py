"""The compare mode's ranking on known votes: Bradley-Terry strengths, intervals and win rates."""

from __future__ import annotations

import math

import pytest

from webapp.admin.arena_rank import ELO_SCALE, fit, rank


def test_three_to_one_gives_the_bradley_terry_odds() -> None:
    # A beats B 30 times, B beats A 10 times: the fit's odds are 3 (a prior of one tie between them, half a win each way, moves them slightly).
    votes = [("a", "b", "a")] * 30 + [("a", "b", "b")] * 10
    scores = fit(votes)
    gap = scores["a"] - scores["b"]
    assert gap == pytest.approx(ELO_SCALE * math.log(30.5 / 10.5), rel=1e-6)
    assert (scores["a"] + scores["b"]) / 2 == pytest.approx(1000)


def test_an_order_of_three_models_with_intervals_and_tallies() -> None:
    votes = (
        [("x", "y", "a")] * 20 + [("x", "y", "b")] * 5
        + [("y", "z", "a")] * 20 + [("y", "z", "b")] * 5
        + [("x", "z", "tie")] * 2 + [("z", "x", "b")] * 10
        + [("x", "z", "both_bad")] * 3
    )  # fmt: skip
    standings = rank(votes, rounds=100)
    assert [s.model_id for s in standings] == ["x", "y", "z"]
    for s in standings:
        assert s.low <= s.score <= s.high
    x = standings[0]
    assert (x.wins, x.losses, x.ties, x.both_bad, x.votes) == (30, 5, 2, 3, 40)
    assert x.win_rate == pytest.approx((30 + 1) / 37)
    # Clear margins: x's interval lies above z's.
    assert x.low > standings[2].high


def test_ties_and_both_bad_alone_leave_models_level() -> None:
    scores = fit([("p", "q", "tie")] * 5 + [("p", "q", "both_bad")] * 5)
    assert scores["p"] == pytest.approx(scores["q"])
    assert rank([]) == []
