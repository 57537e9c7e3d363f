"""The benchmark's arithmetic and table (the benchmark itself runs with ./dev bench, not in CI)."""

from __future__ import annotations

from bench.stats import Row, Sample, percentile, table


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) in (50.0, 51.0)
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_sample_shows_median_and_spread() -> None:
    assert Sample((3.0, 1.0, 2.0)).show() == "2.0 (1.0–3.0)"


def test_table_marks_unmet_and_unmeasured_rows() -> None:
    text = table([Row("a", "1", "2", "0.5", "≥ 0.9", False), Row("b", "", "", "", "", None)])
    assert "**no**" in text and "not measured" in text
