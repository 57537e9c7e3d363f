"""The acceptances table: Alembic schema, WAL, append-only, concurrent writers."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError

from db import acceptances
from db.engine import make_engine, session_factory, upgrade

CONTACT = acceptances.Contact(name="山田 太郎", email="taro@example.jp", affiliation="NII", purpose="研究")


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'audit.sqlite3'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def test_schema_comes_from_migrations(engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {"acceptances", "alembic_version"} <= tables
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0001"
        assert conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert conn.scalar(text("PRAGMA busy_timeout")) == 30000


def test_upgrade_twice_is_harmless(engine) -> None:
    upgrade(engine)


def test_has_accepted_needs_the_exact_terms(engine) -> None:
    sessions = session_factory(engine)
    with sessions.begin() as s:
        acceptances.record(s, identity="a", terms_id="t", terms_sha256="1" * 64, contact=CONTACT, user_agent=None)
    with sessions() as s:
        assert acceptances.has_accepted(s, identity="a", terms_id="t", terms_sha256="1" * 64)
        assert not acceptances.has_accepted(s, identity="a", terms_id="t", terms_sha256="2" * 64)
        assert not acceptances.has_accepted(s, identity="b", terms_id="t", terms_sha256="1" * 64)


@pytest.mark.parametrize("statement", ["UPDATE acceptances SET email = 'x@y.z'", "DELETE FROM acceptances"])
def test_rows_cannot_be_changed(engine, statement: str) -> None:
    with session_factory(engine).begin() as s:
        acceptances.record(s, identity="a", terms_id="t", terms_sha256="1" * 64, contact=CONTACT, user_agent="UA")
    with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM acceptances")).scalars().all() == ["taro@example.jp"]


def test_concurrent_writers_never_see_locked(engine) -> None:
    sessions = session_factory(engine)

    def accept(worker: int) -> None:
        for n in range(25):
            with sessions.begin() as s:
                acceptances.record(
                    s, identity=f"w{worker}-{n}", terms_id="t", terms_sha256="1" * 64, contact=CONTACT, user_agent=None
                )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(accept, range(16)))
    path = engine.url.database
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT identity) FROM acceptances").fetchone() == (400, 400)
