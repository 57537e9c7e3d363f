"""Ratings add rows: a stranger calling the rating event in a loop is refused before the table grows."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningApp, launch
from tests.hostile import call, error_of, is_clear_error
from webapp.settings import Settings


@pytest.fixture(scope="module")
def tight_app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningApp]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("ratings"), models="tiny", hub_offline=True, rate_chat="3/minute"
    )
    app = launch(settings, models_dir)
    try:
        yield app
    finally:
        app.demo.close()


def ratings(app: RunningApp) -> int:
    with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as conn:  # type: ignore[attr-defined]
        return conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def test_rating_in_a_loop_is_refused_clearly_and_stores_nothing(tight_app: RunningApp) -> None:
    session = uuid.uuid4().hex
    # A 👍 on a reply this session never had: answered with a notice until the caller's rate runs out.
    liked = {"index": 1, "value": "x", "liked": True}
    results = [
        error_of(call(tight_app, "page_rate", [[], None, "ja", None], session, event_data=liked)) for _ in range(6)
    ]
    assert results[:3] == [None, None, None], results
    assert all(is_clear_error(e) for e in results[3:]), results
    assert ratings(tight_app) == 0
