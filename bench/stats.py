"""Medians, spreads and percentiles, and the table the benchmark prints."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one quantity."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, fmt: str = "{:.1f}") -> str:
        """Median with the spread (min-max) of the runs."""
        lo, hi = min(self.values), max(self.values)
        return f"{fmt.format(self.median)} ({fmt.format(lo)}–{fmt.format(hi)})"


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    metric: str
    project: str
    baseline: str
    result: str
    target: str
    met: bool | None  # None: not measured here


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| metric | project | baseline | result | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "not measured" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.metric} | {r.project} | {r.baseline} | {r.result} | {r.target} | {met} |")
    return "\n".join(lines)
