"""Database faults fail closed and recover without a restart; nothing personal or secret reaches the log.

Faults are real: a size-limited tmpfs filled up, a file system remounted
read-only, the SQLite file deleted or replaced, the PostgreSQL server stopped
and started again, an app process killed with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client.exceptions import AppError as ClientError
from sqlalchemy import Engine, text

from db import audit
from db.chain import Keyring
from db.engine import make_engine, session_factory, upgrade
from inference import TINY_MODELS, Registry
from tests.conftest import GENEROUS_LIMITS, ROOT, PostgresServer, free_port, launch
from webapp.errors import AuditUnavailable, ConsentRequired
from webapp.gate.consent import AcceptanceForm, Gate
from webapp.gate.identity import Caller, Identities
from webapp.gate.receipts import Receipts
from webapp.gate.terms import Terms

SECRET = b"fault-test-secret-0123456789abcdef"
KEYS = Keyring.of(b"fault-test-audit-key-0123456789")
TINY = Registry.of(TINY_MODELS).get("tiny-llama")
FORM = {"name": "山田 太郎", "email": "taro@example.jp", "affiliation": "NII", "purpose": "研究", "agree": True}
UNAVAILABLE = "Could not record this"
CHAT = {"model_id": "tiny-llama", "temperature": 0.0, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.0,
        "max_new_tokens": 4}  # fmt: skip


def form(n: int) -> AcceptanceForm:
    return AcceptanceForm.parse(name=f"利用者{n}", email=f"user{n}@example.jp", affiliation="NII", purpose="研究",
                                agree=True)  # fmt: skip


def caller(n: int) -> Caller:
    return Caller(f"hf:user{n}", f"user{n}", "UA", None, None)


def gate_on(url: str) -> tuple[Gate, Engine]:
    engine = make_engine(url)
    upgrade(engine, keys=KEYS)
    identities = Identities(Receipts(SECRET, max_age_days=1), SECRET)
    return Gate(session_factory(engine, KEYS), Terms.load(), identities), engine


def recorded(engine: Engine) -> set[str]:
    with session_factory(engine, KEYS)() as s:
        assert audit.verify(s).ok
        return {r["identity"] for r in audit.access_report(s)}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (the tests run as root here)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_fails_closed_and_recovers(small_fs: Path) -> None:
    gate, engine = gate_on(f"sqlite:///{small_fs / 'audit.sqlite3'}")
    acknowledged = set()
    gate.accept(caller(0), form(0))
    acknowledged.add("hf:user0")
    filler = small_fs / "filler"
    with filler.open("wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    failures = 0
    for n in range(1, 40):
        try:
            gate.accept(caller(n), form(n))
            acknowledged.add(f"hf:user{n}")
        except AuditUnavailable as exc:
            assert UNAVAILABLE in str(exc) and "記録できませんでした" in str(exc)
            failures += 1
    assert failures > 0
    filler.unlink()  # space again: the same gate records, no restart
    gate.accept(caller(99), form(99))
    acknowledged.add("hf:user99")
    assert acknowledged <= recorded(engine)
    engine.dispose()


def test_read_only_file_system_fails_closed_and_recovers(small_fs: Path) -> None:
    gate, engine = gate_on(f"sqlite:///{small_fs / 'audit.sqlite3'}")
    gate.accept(caller(1), form(1))
    # The kernel refuses to remount read-only while files are open for writing, so the
    # app's pooled connections are closed first (as they are after any error).
    engine.dispose()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        for n in range(2, 6):
            with pytest.raises(AuditUnavailable, match=UNAVAILABLE):
                gate.accept(caller(n), form(n))
        # A withdrawal that cannot be recorded still locks the chat here, and says so.
        with pytest.raises(AuditUnavailable, match="withdrawal could not be recorded"):
            gate.withdraw(caller(1))
        assert not gate.has_consent(caller(1))
        with pytest.raises((ConsentRequired, AuditUnavailable)):
            gate.admit(caller(1), TINY)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    gate.accept(caller(7), form(7))  # writable again: recorded without a restart
    gate.withdraw(caller(1))  # and the withdrawal now goes on the record
    assert not gate.has_consent(caller(1)) and gate.has_consent(caller(7))
    assert recorded(engine) == {"hf:user1", "hf:user7"}
    with session_factory(engine, KEYS)() as s:
        assert [e.kind for e in audit.latest(s, 2)] == ["withdrawn", "accepted"]
    engine.dispose()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_deleted_or_replaced_file_is_refused_loudly(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.sqlite3"
    gate, engine = gate_on(f"sqlite:///{path}")
    gate.accept(caller(1), form(1))
    if how == "deleted":
        for p in tmp_path.glob("audit.sqlite3*"):
            p.unlink()
    else:
        spare = tmp_path / "spare.sqlite3"
        other = make_engine(f"sqlite:///{spare}")
        upgrade(other, keys=KEYS)
        other.dispose()
        os.replace(spare, path)
    with caplog.at_level(logging.ERROR):
        with pytest.raises(AuditUnavailable, match=UNAVAILABLE):
            gate.accept(caller(2), form(2))
        with pytest.raises(AuditUnavailable):  # consent cannot be read: the chat stays locked
            gate.admit(caller(1), TINY)
    assert f"was {how} while the app runs" in caplog.text
    assert path.exists() == (how == "replaced")  # nothing was created in its place
    engine.dispose()


def test_statement_parameters_never_reach_the_log(
    database_url: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    gate, engine = gate_on(database_url)
    with engine.begin() as conn:  # a fault inside the statement that carries the contact fields
        if engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER fault BEFORE INSERT ON contacts BEGIN SELECT RAISE(ABORT, 'disk'); END"))
        else:
            conn.execute(text("CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                              "RAISE EXCEPTION 'disk'; END $$"))  # fmt: skip
            conn.execute(text("CREATE TRIGGER fault BEFORE INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION fault()"))
    secret_form = AcceptanceForm.parse(name="Secret Person", email="very.private@example.jp",
                                       affiliation="Hidden Lab", purpose="confidential-purpose", agree=True)  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AuditUnavailable):
            gate.accept(Caller("hf:someone", "someone", "PrivateAgent/9", None, None), secret_form)
        assert "audit database unavailable" in caplog.text
    logged = caplog.text + "".join(capfd.readouterr())
    for value in ("Secret Person", "very.private@example.jp", "Hidden Lab", "confidential-purpose",
                  "PrivateAgent/9", SECRET.decode(), KEYS.current.decode()):  # fmt: skip
        assert value not in logged, value
    assert recorded(engine) == set()  # nothing half-written
    engine.dispose()


def test_postgres_stopped_and_restarted_over_http(postgres: PostgresServer, models_dir: Path, tmp_path: Path) -> None:
    from webapp.settings import Settings

    url = postgres.create_database("faults_http")
    settings = Settings(data_dir=tmp_path, database_url=url, models="tiny", default_model="tiny-llama",
                        hub_offline=True, **GENEROUS_LIMITS)  # fmt: skip
    app = launch(settings, models_dir)
    try:
        early, late = app.client(), app.client()
        _, receipt = early.predict(**FORM, api_name="/accept_terms")
        postgres.stop()
        try:
            with pytest.raises(ClientError, match=UNAVAILABLE) as refused:
                late.predict(**FORM, api_name="/accept_terms")
            assert "Unexpected" not in str(refused.value)
            with pytest.raises(ClientError, match=UNAVAILABLE):  # consent unknown: the chat is locked
                early.predict("こんにちは", **CHAT, receipt=receipt, api_name="/chat")
        finally:
            postgres.start()
        late.predict(**FORM, api_name="/accept_terms")  # recovered without a restart
        assert early.predict("こんにちは", **CHAT, receipt=receipt, api_name="/chat")
    finally:
        app.demo.close()
    engine = make_engine(url)
    with session_factory(engine, settings.audit_keyring())() as s:
        assert audit.verify(s).ok
        assert len(audit.access_report(s)) == 2
    engine.dispose()


def test_sigkill_during_concurrent_acceptances_loses_nothing_acknowledged(tmp_path: Path, models_dir: Path) -> None:
    from gradio_client import Client

    from webapp.settings import Settings

    port = free_port()
    env = os.environ | {"LLMJP_DATA_DIR": str(tmp_path), "LLMJP_MODELS": "tiny", "GRADIO_SERVER_PORT": str(port),
                        "GRADIO_SERVER_NAME": "127.0.0.1", "PYTHONPATH": str(ROOT),
                        **{f"LLMJP_{k.upper()}": str(v) for k, v in GENEROUS_LIMITS.items()}}  # fmt: skip
    log = (tmp_path / "app.log").open("wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:  # a cheap probe, often: the app answers about 5 s after its start
            try:
                httpx.get(url, timeout=5).raise_for_status()
                break
            except httpx.HTTPError as exc:
                assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"the app did not start: {exc}"
                time.sleep(0.2)
        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def burst(worker: int) -> None:
            client = Client(url, verbose=False)
            for n in range(1000):
                if stop.is_set():
                    return
                name = f"kill-{worker}-{n}"
                try:
                    client.predict(**(FORM | {"name": name}), api_name="/accept_terms")
                except Exception:
                    return
                with lock:
                    acknowledged.append(name)

        threads = [threading.Thread(target=burst, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        while len(acknowledged) < 40 and all(t.is_alive() for t in threads):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url)
    with session_factory(engine, settings.audit_keyring())() as s:
        assert audit.verify(s).ok
        stored = {r["name"] for r in audit.access_report(s)}
    engine.dispose()
    assert len(acknowledged) >= 40
    assert set(acknowledged) <= stored
    print(f"\n{len(acknowledged)} acknowledged before SIGKILL, {len(stored)} stored, chain intact")
    shutil.rmtree(tmp_path / "models", ignore_errors=True)
