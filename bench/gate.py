"""The server-side gate: checking and recording acceptances, alone and under 32 concurrent clients."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client
from sqlalchemy import text

from bench.stats import percentile
from db.audit import verify
from db.engine import make_engine, session_factory, upgrade
from webapp.gate.consent import AcceptanceForm, Gate
from webapp.gate.identity import Caller, Identities
from webapp.gate.receipts import Receipts
from webapp.gate.terms import Terms
from webapp.settings import Settings

FORM = AcceptanceForm.parse(name="山田 太郎", email="taro@example.jp", affiliation="NII", purpose="bench", agree=True)
API_FORM = {"name": "山田 太郎", "email": "taro@example.jp", "affiliation": "NII", "purpose": "bench", "agree": True}


def _ms(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 50) * 1000, percentile(samples, 99) * 1000


def micro(data_dir: Path, checks: int = 2000, writes: int = 300) -> dict[str, tuple[float, float]]:
    """p50/p99 in ms of the gate check and of recording an acceptance, with SQL baselines."""
    engine = make_engine(f"sqlite:///{data_dir / 'gate.sqlite3'}")
    upgrade(engine)
    sessions = session_factory(engine)
    secret = b"bench-secret-0123456789abcdef0123456789"
    gate = Gate(sessions, Terms.load(), Identities(Receipts(secret, max_age_days=90), secret))
    caller = Caller("anon:bench", None, "bench", None, None)
    gate.accept(caller, FORM)

    def timed(fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
        return out

    def select_one() -> None:
        with sessions() as s:
            s.execute(text("SELECT 1")).scalar()

    raw = sqlite3.connect(data_dir / "baseline.sqlite3", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")

    def plain_insert() -> None:
        raw.execute("BEGIN")
        raw.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
        raw.execute("COMMIT")

    counter = iter(range(10**9))
    results = {
        "check": _ms(timed(lambda: gate.has_consent(caller), checks)),
        "check_baseline": _ms(timed(select_one, checks)),
        "record": _ms(
            timed(lambda: gate.accept(Caller(f"anon:w{next(counter)}", None, "b", None, None), FORM), writes)
        ),
        "record_baseline": _ms(timed(plain_insert, writes)),
    }
    engine.dispose()
    return results


def concurrent_http(url: str, database: Path, clients: int = 32, each: int = 10) -> tuple[float, int, int, bool]:
    """``clients`` gradio_client sessions accepting ``each`` times at once: events/s, expected, stored, chain ok."""
    sessions = [Client(url, verbose=False) for _ in range(clients)]
    before = _accepted(database)
    barrier = threading.Barrier(clients)

    def run(client: Client) -> None:
        barrier.wait()
        for _ in range(each):
            # A new visitor each time: the same session accepting again keeps its identity and
            # records nothing new, and the row counts acceptances that must each be stored.
            client.session_hash = uuid.uuid4().hex
            client.predict(**API_FORM, api_name="/accept_terms")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(run, sessions))
    elapsed = time.perf_counter() - started
    stored = _accepted(database) - before
    engine = make_engine(f"sqlite:///{database}")
    # The server signs its chain with a key derived from its own secret, kept beside the database.
    keys = Settings(data_dir=database.parent).audit_keyring(create=False)
    with session_factory(engine, keys)() as s:
        intact = verify(s).ok
    engine.dispose()
    return clients * each / elapsed, clients * each, stored, intact


def _accepted(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'accepted'").fetchone()[0]
