"""Ranking models from pairwise votes: win rates, and a Bradley-Terry fit with bootstrap confidence intervals.

Bradley-Terry: P(i beats j) = p_i / (p_i + p_j). A tie counts half a win to
each side; "both bad" says nothing about which is better and is left out of
the fit (it is counted in the table). Strengths are fitted by the MM
algorithm (Hunter 2004) and shown on the Elo scale, anchored so that their
mean is 1000; intervals come from refitting on votes drawn with replacement.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

Vote = tuple[str, str, str]
"""(model_a, model_b, verdict) with verdict one of "a", "b", "tie", "both_bad"."""

ELO_SCALE = 400 / math.log(10)
# A tiny prior of one tie against every other model keeps a model that never lost (or never won) finite.
PRIOR = 0.5


@dataclass(frozen=True)
class Standing:
    model_id: str
    score: float
    low: float
    high: float
    votes: int
    wins: int
    losses: int
    ties: int
    both_bad: int

    @property
    def win_rate(self) -> float:
        decided = self.wins + self.losses + self.ties
        return (self.wins + 0.5 * self.ties) / decided if decided else 0.0


def fit(votes: Iterable[Vote], *, iterations: int = 500) -> dict[str, float]:
    """Bradley-Terry strengths on the Elo scale (mean 1000)."""
    wins: dict[tuple[str, str], float] = defaultdict(float)
    models: set[str] = set()
    for a, b, verdict in votes:
        models |= {a, b}
        if a == b or verdict == "both_bad":
            continue
        share = {"a": 1.0, "b": 0.0, "tie": 0.5}[verdict]
        wins[a, b] += share
        wins[b, a] += 1 - share
    names = sorted(models)
    if not names:
        return {}
    for i in names:
        for j in names:
            if i != j:
                wins[i, j] += PRIOR / max(1, len(names) - 1)
    p = dict.fromkeys(names, 1.0)
    for _ in range(iterations):
        new = {}
        for i in names:
            won = sum(wins[i, j] for j in names if j != i)
            games = sum((wins[i, j] + wins[j, i]) / (p[i] + p[j]) for j in names if j != i)
            new[i] = won / games if games else p[i]
        mean_log = sum(math.log(v) for v in new.values()) / len(new)
        p = {k: v / math.exp(mean_log) for k, v in new.items()}
    return {k: 1000 + ELO_SCALE * math.log(v) for k, v in p.items()}


def rank(votes: list[Vote], *, rounds: int = 200, seed: int = 0, level: float = 0.95) -> list[Standing]:
    """Every model with its score, a bootstrap interval and its tallies, best first."""
    scores = fit(votes)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds if votes else 0):
        drawn = [votes[rng.randrange(len(votes))] for _ in votes]
        for k, v in fit(drawn, iterations=100).items():
            samples[k].append(v)
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for a, b, verdict in votes:
        for me, other_side in ((a, "b"), (b, "a")):
            tally[me]["votes"] += 1
            if verdict == "tie":
                tally[me]["ties"] += 1
            elif verdict == "both_bad":
                tally[me]["both_bad"] += 1
            elif verdict == other_side:
                tally[me]["losses"] += 1
            else:
                tally[me]["wins"] += 1
    out = []
    for model, score in scores.items():
        spread = sorted(samples[model]) or [score]
        cut = (1 - level) / 2
        low = spread[int(cut * (len(spread) - 1))]
        high = spread[math.ceil((1 - cut) * (len(spread) - 1))]
        t = tally[model]
        out.append(Standing(model, score, low, high, t["votes"], t["wins"], t["losses"], t["ties"], t["both_bad"]))
    return sorted(out, key=lambda s: (-s.score, s.model_id))


def table(standings: list[Standing]) -> list[dict[str, object]]:
    """Rows for the admin tab and its export."""
    return [
        {
            "rank": i + 1,
            "model_id": s.model_id,
            "score": round(s.score, 1),
            "ci_low": round(s.low, 1),
            "ci_high": round(s.high, 1),
            "win_rate": round(s.win_rate, 3),
            "votes": s.votes,
            "wins": s.wins,
            "losses": s.losses,
            "ties": s.ties,
            "both_bad": s.both_bad,
        }
        for i, s in enumerate(standings)
    ]
