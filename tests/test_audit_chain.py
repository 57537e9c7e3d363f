"""The keyed chain, anchors, erasure, retention and the 0002 → 0003 migration, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from db import audit
from db.chain import CONTACT_FIELDS, GENESIS, LEGACY_FIELDS, Keyring, iso, legacy_hash
from db.engine import make_engine, session_factory, upgrade
from db.models import Event, EventKind
from tests.db_cli import in_a_process, in_this_process

CONTACT = audit.Contact(name="山田 花子", email="hanako.unique@example.jp", affiliation="NII", purpose="研究")
SHA = "a" * 64


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def accept(engine: Engine, identity: str, **contact: str) -> None:
    with session_factory(engine).begin() as s:
        audit.accept(s, identity=identity, terms_id="tou", terms_sha256=SHA,
                     contact=audit.Contact(**(vars(CONTACT) | contact)), user_agent="UA/1")  # fmt: skip


def verdict(engine: Engine) -> audit.Verdict:
    with session_factory(engine)() as s:
        return audit.verify(s)


def drop_guards(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for name in ("events_no_update", "events_no_delete", "contacts_no_update"):
                conn.execute(text(f"DROP TRIGGER {name}"))
        else:
            conn.execute(text("DROP TRIGGER events_no_change ON events"))
            conn.execute(text("DROP TRIGGER contacts_no_update ON contacts"))


# -- verify cannot check: exit 2, nothing created --------------------------------------------


def test_verify_on_a_missing_sqlite_file_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "audit.sqlite3"
    result = in_a_process(f"sqlite:///{target}", "verify", LLMJP_DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 2
    assert "cannot check" in result.stderr and "no database at" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.parent.exists() and not (tmp_path / "data").exists()


def test_verify_on_an_unreachable_server_exits_2(tmp_path: Path) -> None:
    from tests.conftest import free_port

    result = in_this_process(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", "verify")
    assert result.returncode == 2 and "cannot check" in result.stderr and "Traceback" not in result.stderr


def test_verify_on_a_database_without_the_log_exits_2(tmp_path: Path) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "other.sqlite3").close()
    result = in_this_process(f"sqlite:///{tmp_path / 'other.sqlite3'}", "verify")
    assert result.returncode == 2 and "holds no audit log" in result.stderr


# -- the key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("forger", ["own key", "plain sha-256", "real key id, own key"])
def test_a_chain_recomputed_without_the_key_fails(engine: Engine, database_url: str, forger: str) -> None:
    """Someone with the database but not the key drops the guards, edits, and re-chains everything."""
    for n in range(5):
        accept(engine, f"anon:{n}")
    assert verdict(engine).ok
    drop_guards(engine)
    stolen = Keyring.of(b"attacker-chosen-key-0123456789")
    with session_factory(engine)() as s:
        events = list(s.scalars(text("SELECT seq FROM events ORDER BY seq")))
        rows = [s.get(Event, seq) for seq in events]
    prev = GENESIS
    with engine.begin() as conn:
        for event in rows:
            if event.seq == 3:
                event.identity = "anon:someone-else"
            event.prev_hash = prev
            if forger == "own key":
                event.key_id = stolen.current_id
            digest = (
                legacy_hash(event.hashed_fields())
                if forger == "plain sha-256"
                else stolen.sign(stolen.current_id, event.hashed_fields())
            )
            conn.execute(
                text("UPDATE events SET identity = :i, key_id = :k, prev_hash = :p, hash = :h WHERE seq = :s"),
                {"i": event.identity, "k": event.key_id, "p": prev, "h": digest, "s": event.seq},
            )
            prev = digest
        conn.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})
    result = verdict(engine)
    assert not result.ok and result.bad_seq == 1  # the very first re-signed event gives it away
    run = in_this_process(database_url, "verify")
    assert run.returncode == 1 and "FAILED at event 1" in run.stderr


def test_rotated_keys_still_verify_old_events(engine: Engine) -> None:
    old, new = Keyring.of(b"first-audit-key-0123456789"), Keyring.of(b"second-audit-key-0123456789")
    with session_factory(engine, old).begin() as s:
        audit.append(s, kind=EventKind.WITHDRAWN, identity="anon:a")
    rotated = Keyring.of(new.current, [old.current])
    with session_factory(engine, rotated).begin() as s:
        audit.append(s, kind=EventKind.WITHDRAWN, identity="anon:b")
    with session_factory(engine, rotated)() as s:
        assert audit.verify(s).ok
    with session_factory(engine, new)() as s:  # the old key forgotten: its events cannot be trusted
        result = audit.verify(s)
    assert not result.ok and result.bad_seq == 1 and "not configured" in result.problem


def test_repeats_are_part_of_the_chain(engine: Engine) -> None:
    with session_factory(engine).begin() as s:
        audit.append(s, kind=EventKind.REFUSED, identity="anon:-", reason="no_consent", repeats=7)
        audit.append(s, kind=EventKind.REFUSED, identity="anon:-", reason="no_consent")
    assert verdict(engine).ok
    drop_guards(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE events SET repeats = 1 WHERE seq = 1"))
    assert verdict(engine).bad_seq == 1


# -- the anchor ------------------------------------------------------------------------------


def test_anchor_catches_a_log_cut_back_and_resealed(engine: Engine, database_url: str) -> None:
    for n in range(3):
        accept(engine, f"anon:{n}")
    head = in_a_process(database_url, "head")
    assert head.returncode == 0, head.stderr
    anchor = head.stdout.strip()
    assert anchor.startswith("llmjp-head-v1.3.")
    accept(engine, "anon:3")
    assert in_this_process(database_url, "verify", "--anchor", anchor).returncode == 0
    forged = anchor.replace(".3.", ".2.", 1)
    bad = in_this_process(database_url, "verify", "--anchor", forged)
    assert bad.returncode == 2 and "signature does not match" in bad.stderr
    # Someone removes the last two events and points the head back: the chain itself still holds...
    drop_guards(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM contacts WHERE seq >= 3"))
        conn.execute(text("DELETE FROM events WHERE seq >= 3"))
        conn.execute(text("UPDATE audit_head SET seq = 2, hash = (SELECT hash FROM events WHERE seq = 2)"))
    assert in_this_process(database_url, "verify").returncode == 0
    # ...but not the anchor kept elsewhere.
    cut = in_this_process(database_url, "verify", "--anchor", anchor)
    assert cut.returncode == 1 and "no longer extends the anchor at event 3" in cut.stderr


# -- erasure and retention -----------------------------------------------------------------


def test_contact_edits_and_silent_removals_are_caught(engine: Engine) -> None:
    accept(engine, "anon:a")
    accept(engine, "anon:b")
    drop_guards(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET email = 'other@example.com' WHERE seq = 2"))
    result = verdict(engine)
    assert result.bad_seq == 2 and "contact fields were altered" in result.problem
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM contacts WHERE seq = 2"))
    result = verdict(engine)
    assert result.bad_seq == 2 and "gone with no erasure" in result.problem


def test_erase_one_person(engine: Engine, database_url: str) -> None:
    accept(engine, "anon:keep", name="残す人", email="keep.me@example.jp")
    accept(engine, "anon:gone", name="消える人", email="erase.me@example.jp", purpose="消去される目的")
    accept(engine, "anon:gone", name="消える人", email="erase.me@example.jp", purpose="二度目")
    run = in_a_process(database_url, "erase", "--identity", "anon:gone")
    assert run.returncode == 0 and "erased 2 contact record(s)" in run.stdout
    assert in_this_process(database_url, "verify").returncode == 0
    report = json.loads(in_this_process(database_url, "export", "--format", "json").stdout)
    assert [(r["identity"], r["contact"], r["email"]) for r in report] == [
        ("anon:keep", "kept", "keep.me@example.jp"),
        ("anon:gone", "erased", ""),
        ("anon:gone", "erased", ""),
    ]
    with engine.connect() as conn:
        kinds = conn.execute(text("SELECT kind, identity, reason FROM events ORDER BY seq")).all()
    assert [tuple(k) for k in kinds] == [
        ("accepted", "anon:keep", None), ("accepted", "anon:gone", None), ("accepted", "anon:gone", None),
        ("erased", "anon:gone", "operator"),
    ]  # fmt: skip
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database.removeprefix("file:"))
        engine.dispose()
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"keep.me@example.jp" in raw  # the search does find what is there
        for gone in ("erase.me@example.jp", "消える人", "消去される目的", "二度目"):
            assert gone.encode() not in raw, gone


def test_retention_erases_old_contact_fields_only(engine: Engine, database_url: str) -> None:
    now = datetime.now(UTC)
    with session_factory(engine).begin() as s:
        for identity, age in (("anon:old", 40), ("anon:new", 2)):
            audit.append(s, kind=EventKind.ACCEPTED, identity=identity, now=now - timedelta(days=age),
                         terms_id="tou", terms_sha256=SHA, contact={"name": identity, "email": f"{identity}@x.jp",
                         "affiliation": "a", "purpose": "p", "user_agent": None})  # fmt: skip
    with session_factory(engine).begin() as s:
        assert audit.erase_older(s, days=30) == 1
    with session_factory(engine).begin() as s:
        assert audit.erase_older(s, days=30) == 0  # nothing more, and nothing recorded
    assert verdict(engine).ok
    with session_factory(engine)() as s:
        report = {r["identity"]: r["contact"] for r in audit.access_report(s)}
        kinds = [e.kind for e in audit.latest(s)]
    assert report == {"anon:old": "erased", "anon:new": "kept"}
    assert kinds == ["erased", "accepted", "accepted"]


def test_retention_setting_sweeps_at_start(tmp_path: Path, models_dir: Path) -> None:
    from webapp.factory import create_app
    from webapp.settings import Settings

    settings = Settings(data_dir=tmp_path, contact_retention_days=30, models="tiny", hub_offline=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine, keys=settings.audit_keyring())
    with session_factory(engine, settings.audit_keyring()).begin() as s:
        audit.append(s, kind=EventKind.ACCEPTED, identity="anon:old", now=datetime.now(UTC) - timedelta(days=31),
                     terms_id="tou", terms_sha256=SHA, contact=dict.fromkeys(CONTACT_FIELDS, "x"))  # fmt: skip
    create_app(settings).close()
    with session_factory(engine, settings.audit_keyring())() as s:
        assert audit.verify(s).ok
        assert [r["contact"] for r in audit.access_report(s)] == ["erased"]


# -- migration from the unkeyed chain of 0002 --------------------------------------------------


def _append_0002(engine: Engine, kind: str, identity: str, **fields: object) -> None:
    """What revision 0002's ``audit.append`` wrote: plain SHA-256 over the row, contact fields inside."""
    with engine.begin() as conn:
        seq, prev = conn.execute(text("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")).one()
        at = datetime(2026, 11, 20, 9, seq, tzinfo=UTC)
        row = dict.fromkeys(f for f in LEGACY_FIELDS if f != "created_at") | fields | {"seq": seq, "kind": kind, "identity": identity,
                                                        "prev_hash": prev}  # fmt: skip
        digest = legacy_hash(row | {"created_at": iso(at)})
        cols = ", ".join(row) + ", created_at, hash"
        conn.execute(text(f"INSERT INTO events ({cols}) VALUES ({', '.join(':' + c for c in row)}, :at, :h)"),
                     row | {"at": at, "h": digest})  # fmt: skip
        conn.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": digest})


def test_a_0002_log_is_upgraded_and_verifies(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0002")
    contact = {"name": "旧 利用者", "email": "old@example.jp", "affiliation": "A", "purpose": "P", "user_agent": "UA"}
    _append_0002(engine, "accepted", "session:1", terms_id="tou", terms_sha256=SHA, **contact)
    _append_0002(engine, "licence_acknowledged", "session:1", licence="CC BY-NC 4.0", model_id="weblab")
    _append_0002(engine, "refused", "session:2", reason="no_consent", model_id="tiny-llama")
    with engine.connect() as conn:
        old_head = conn.execute(text("SELECT hash FROM audit_head")).scalar_one()
    upgrade(engine)
    result = verdict(engine)
    assert result.ok and result.events == 4, result
    with session_factory(engine)() as s:
        assert audit.has_consent(s, identity="session:1", terms_id="tou", terms_sha256=SHA)
        sealed = s.get(Event, 4)
        first = s.get(Event, 1)
        assert (sealed.kind, sealed.detail) == ("rechained", f"sha256 head 3 {old_head}")
        assert first.contact is not None and first.contact.email == "old@example.jp"
        assert audit.erase(s, identity="session:1") == 1
        s.commit()
    assert verdict(engine).ok
    engine.dispose()


def test_a_broken_0002_log_is_not_resealed(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0002")
    _append_0002(engine, "refused", "session:2", reason="no_consent")
    _append_0002(engine, "refused", "session:3", reason="no_consent")
    with engine.begin() as conn:
        trigger = "DROP TRIGGER events_no_update" if engine.dialect.name == "sqlite" else (
            "DROP TRIGGER events_no_change ON events")  # fmt: skip
        conn.execute(text(trigger))
        conn.execute(text("UPDATE events SET identity = 'session:9' WHERE seq = 1"))
    with pytest.raises(RuntimeError, match="does not verify at event 1"):
        upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0002"
    engine.dispose()


def test_a_retired_derived_key_is_listed_as_text(tmp_path: Path) -> None:
    """Rotating away from the key derived from the server secret, as the README says."""
    import hashlib
    import hmac

    from webapp.settings import Settings

    old = Settings(data_dir=tmp_path, secret_key="first-server-secret-0123456789abcdef")
    derived = hmac.new(b"first-server-secret-0123456789abcdef", b"llmjp-demo/audit-key", hashlib.sha256).hexdigest()
    new = Settings(data_dir=tmp_path, secret_key="second-server-secret-0123456789abcdef", audit_old_keys=[derived])
    engine = make_engine(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    upgrade(engine, keys=old.audit_keyring())
    with session_factory(engine, old.audit_keyring()).begin() as s:
        audit.append(s, kind=EventKind.WITHDRAWN, identity="anon:a")
    with session_factory(engine, new.audit_keyring()).begin() as s:
        audit.append(s, kind=EventKind.WITHDRAWN, identity="anon:b")
    with session_factory(engine, new.audit_keyring())() as s:
        assert audit.verify(s).ok
    engine.dispose()
