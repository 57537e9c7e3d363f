"""The audit log on SQLite and on a real PostgreSQL: schema, consent, append-only, tamper evidence, load."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from db import audit, export
from db.engine import HEAD, MIGRATIONS, make_engine, session_factory, upgrade
from db.models import EventKind
from tests.conftest import ROOT
from tests.db_cli import in_a_process, in_this_process

CONTACT = audit.Contact(name="山田 太郎", email="taro@example.jp", affiliation="NII", purpose="研究")
SHA = "a" * 64


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def accept(engine: Engine, identity: str, sha: str = SHA, **contact: str) -> None:
    with session_factory(engine).begin() as s:
        audit.accept(s, identity=identity, terms_id="tou", terms_sha256=sha,
                     contact=audit.Contact(**(vars(CONTACT) | contact)), user_agent="UA", client_hash=None)  # fmt: skip


def withdraw(engine: Engine, identity: str) -> None:
    with session_factory(engine).begin() as s:
        audit.append(s, kind=EventKind.WITHDRAWN, identity=identity)


def consent(engine: Engine, identity: str, sha: str = SHA) -> bool:
    with session_factory(engine)() as s:
        return audit.has_consent(s, identity=identity, terms_id="tou", terms_sha256=sha)


def verdict(engine: Engine) -> audit.Verdict:
    with session_factory(engine)() as s:
        return audit.verify(s)


def drop_guards(engine: Engine) -> None:
    """What someone with direct database access can do before tampering."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER events_no_update"))
            conn.execute(text("DROP TRIGGER events_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER events_no_change ON events"))


def test_schema_comes_from_migrations(engine: Engine) -> None:
    assert {"events", "contacts", "audit_head", "alembic_version"} <= set(inspect(engine).get_table_names())
    assert "acceptances" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == HEAD
        if engine.dialect.name == "sqlite":
            assert conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert conn.scalar(text("PRAGMA busy_timeout")) == 30000
            assert conn.scalar(text("PRAGMA secure_delete")) == 1
    upgrade(engine)  # twice is harmless


def test_head_names_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(str(MIGRATIONS)).get_heads() == [HEAD]


def test_a_start_on_a_database_at_head_leaves_alembic_unimported(database_url: str) -> None:
    """A restart reads the schema version; Alembic is imported only when there is something to migrate."""
    script = """
import sys
from sqlalchemy import text
from db.engine import make_engine, upgrade

def forget_alembic():
    for module in [m for m in sys.modules if m == "alembic" or m.startswith("alembic.")]:
        del sys.modules[module]

engine = make_engine(sys.argv[1])
upgrade(engine, "0003")
forget_alembic()
upgrade(engine)
print("behind", "alembic" in sys.modules)
forget_alembic()
upgrade(engine)
print("at-head", "alembic" in sys.modules)
with engine.connect() as conn:
    print(conn.scalar(text("SELECT version_num FROM alembic_version")))
"""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script, database_url], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["behind", "True", "at-head", "False", HEAD]


def test_a_first_start_logs_one_line(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # as app.py logs: Alembic would add a dozen lines of its plugins and steps
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    assert [r.getMessage() for r in caplog.records] == [f"database schema upgraded from an empty database to {HEAD}"]


def test_the_command_line_upgrade_names_each_step(tmp_path: Path) -> None:
    by_hand = in_a_process(f"sqlite:///{tmp_path / 'audit.sqlite3'}", "upgrade")
    assert by_hand.returncode == 0 and by_hand.stdout.startswith("schema is up to date")
    assert f"Running upgrade 0005 -> {HEAD}" in by_hand.stderr
    assert by_hand.stderr.endswith(f"database schema upgraded from an empty database to {HEAD}\n")


def test_earlier_acceptances_are_carried_into_the_chain(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        for n in range(3):
            conn.execute(
                text(
                    "INSERT INTO acceptances (identity, terms_id, terms_sha256, name, email, affiliation, purpose,"
                    " accepted_at, user_agent) VALUES (:i, 'tou', :sha, 'n', 'e@x.jp', 'a', 'p', :t, NULL)"
                ),
                {"i": f"session:{n}", "sha": SHA, "t": datetime(2026, 11, 1, 9, n, tzinfo=UTC)},
            )
    upgrade(engine)
    result = verdict(engine)
    assert result.ok and result.events == 4  # three acceptances, sealed under the key by one more event
    assert consent(engine, "session:2")
    engine.dispose()


def test_consent_follows_the_latest_event(engine: Engine) -> None:
    assert not consent(engine, "anon:a")
    accept(engine, "anon:a")
    assert consent(engine, "anon:a")
    assert not consent(engine, "anon:a", sha="b" * 64)  # new terms: asked again
    assert not consent(engine, "anon:b")
    withdraw(engine, "anon:a")
    assert not consent(engine, "anon:a")
    accept(engine, "anon:a")
    assert consent(engine, "anon:a")
    assert verdict(engine).ok


@pytest.mark.parametrize("statement", ["UPDATE events SET identity = 'anon:x'", "DELETE FROM events"])
def test_events_cannot_be_changed(engine: Engine, statement: str) -> None:
    accept(engine, "anon:a")
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    assert verdict(engine).ok


TAMPERING = {
    "edit a field": ["UPDATE events SET identity = 'anon:someone-else' WHERE seq = 3"],
    # Contact rows refer to their events: a forger removes them first.
    "delete a row": ["DELETE FROM contacts WHERE seq = 3", "DELETE FROM events WHERE seq = 3"],
    "swap two rows": [
        "DELETE FROM contacts WHERE seq IN (3, 4)",
        "UPDATE events SET seq = -1 WHERE seq = 3",
        "UPDATE events SET seq = 3 WHERE seq = 4",
        "UPDATE events SET seq = 4 WHERE seq = -1",
    ],
    "edit and re-hash one row": ["UPDATE events SET terms_id = 'x' WHERE seq = 3"],
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_is_caught_and_named(engine: Engine, database_url: str, how: str) -> None:
    for n in range(5):
        accept(engine, f"anon:{n}", name=f"利用者{n}")
    assert verdict(engine).ok
    drop_guards(engine)
    with engine.begin() as conn:
        for statement in TAMPERING[how]:
            conn.execute(text(statement))
    if how == "edit and re-hash one row":
        # A careful forger recomputes the edited row's own hash: the next link still breaks.
        from db.models import Event

        with session_factory(engine)() as s:
            event = s.get(Event, 3)
            new_hash = audit.keys_of(s).sign(event.key_id, event.hashed_fields())
        with engine.begin() as conn:
            conn.execute(text("UPDATE events SET hash = :h WHERE seq = 3"), {"h": new_hash})
    result = verdict(engine)
    assert not result.ok
    assert result.bad_seq == (4 if how == "edit and re-hash one row" else 3)
    cli = in_this_process(database_url, "verify")
    assert cli.returncode == 1
    assert f"event {result.bad_seq}" in cli.stderr


def test_truncating_the_end_is_caught(engine: Engine) -> None:
    for n in range(3):
        accept(engine, f"anon:{n}")
    drop_guards(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM contacts WHERE seq = 3"))
        conn.execute(text("DELETE FROM events WHERE seq = 3"))
    result = verdict(engine)
    assert not result.ok and "head records 3 events but the log holds 2" in result.problem


def test_cli_verify_and_export(engine: Engine, database_url: str) -> None:
    accept(engine, "anon:a", name='=HYPERLINK("http://x")')
    accept(engine, "anon:b", name="<img src=x onerror=alert(1)>")
    withdraw(engine, "anon:a")
    ok = in_a_process(database_url, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "OK: 3 events" in ok.stdout

    as_json = json.loads(in_a_process(database_url, "export", "--format", "json").stdout)
    assert [(r["identity"], r["status"]) for r in as_json] == [("anon:a", "withdrawn"), ("anon:b", "accepted")]
    assert as_json[1]["name"] == "<img src=x onerror=alert(1)>"  # stored and exported as given
    assert set(as_json[0]) == set(audit.REPORT_COLUMNS)

    as_csv = in_this_process(database_url, "export", "--format", "csv").stdout.splitlines()
    assert as_csv[0] == ",".join(audit.REPORT_COLUMNS)
    assert as_csv[1].startswith("anon:a,\"'=HYPERLINK")  # a formula stays text in a spreadsheet
    assert in_this_process(database_url, "export", "--format", "json", "--since", "2999-01-01").stdout.strip() == "[]"
    assert in_this_process(database_url, "export", "--format", "xml").returncode != 0


def test_since_accepts_dates_and_times() -> None:
    assert export.parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert export.parse_since("2026-11-01T09:30:00+09:00").utcoffset().total_seconds() == 9 * 3600


def test_32_writers_times_50_acceptances(engine: Engine) -> None:
    """Concurrent visitors: every event lands, none sees 'database is locked', the chain holds."""
    sessions = session_factory(engine)
    engine.pool.dispose()

    def writer(worker: int) -> None:
        for n in range(50):
            with sessions.begin() as s:
                audit.accept(s, identity=f"anon:{worker}-{n}", terms_id="tou", terms_sha256=SHA, contact=CONTACT)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(writer, range(32)))
    elapsed = time.perf_counter() - started
    result = verdict(engine)
    assert result.ok and result.events == 1600
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT COUNT(DISTINCT identity) FROM events")) == 1600
    print(f"\n{engine.dialect.name}: 1600 acceptances from 32 threads in {elapsed:.2f} s ({1600 / elapsed:.0f}/s)")
