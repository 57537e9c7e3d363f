"""Conversations kept on the server for a signed-in account that opted in: the table's bounds, the merge of two
devices' lists, and erasure (``db erase`` and the function behind ``/admin_erase``) removing them on the record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from db import audit, kept
from db.engine import make_engine, session_factory, upgrade
from inference.registry import TINY_MODELS, Registry
from tests.conftest import ROOT
from tests.test_history import chat
from webapp.chat import history

REGISTRY = Registry.of(TINY_MODELS)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def saved(n: int, *, updated: str = "2026-01-01T00:00:00+00:00", **changes: object) -> history.Saved:
    values = {"id": f"{n:012x}", "updated": updated, "title": f"会話 {n}"} | changes
    return history.check_store([chat(**values)], REGISTRY)[0]


def keep(engine: Engine, identity: str, chats: list[history.Saved]) -> None:
    with session_factory(engine).begin() as s:
        kept.write(s, identity, history.dump(chats))


def stored(engine: Engine, identity: str) -> list[dict] | None:
    with session_factory(engine)() as s:
        return kept.read(s, identity)


def test_an_account_keeps_its_list_and_opting_out_deletes_it(engine: Engine) -> None:
    assert stored(engine, "hf:alice") is None
    with session_factory(engine).begin() as s:
        assert kept.lock(s, "hf:alice") is False  # not opted in: nothing to lock, nothing written
    keep(engine, "hf:alice", [])  # opted in with no conversation yet: the row is the opt-in
    assert stored(engine, "hf:alice") == []
    keep(engine, "hf:alice", [saved(2), saved(1)])
    assert [c["title"] for c in stored(engine, "hf:alice")] == ["会話 2", "会話 1"]
    assert stored(engine, "hf:bob") is None  # per identity
    with session_factory(engine).begin() as s:
        assert kept.lock(s, "hf:alice") is True
        assert kept.remove(s, "hf:alice") == 2
        assert kept.remove(s, "hf:alice") is None
    assert stored(engine, "hf:alice") is None


@pytest.mark.parametrize(
    ("identity", "size"),
    [
        ("anon:0123456789abcdef", 1),  # an anonymous visitor never keeps conversations on the server
        ("hf:alice", history.MAX_CHATS + 1),  # more conversations than the browser keeps
    ],
)
def test_the_table_refuses_what_the_browser_would_not_keep(engine: Engine, identity: str, size: int) -> None:
    with pytest.raises(kept.TooMuch), session_factory(engine).begin() as s:
        kept.write(s, identity, [{"id": f"{i:012x}"} for i in range(size)])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM kept_conversations")).scalar() == 0


def test_the_table_refuses_more_characters_than_the_browser_keeps(engine: Engine) -> None:
    big = [{"id": "0" * 12, "title": "あ" * (kept.MAX_CHARS - 20)}]
    assert len(json.dumps(big, ensure_ascii=False)) > kept.MAX_CHARS
    with pytest.raises(kept.TooMuch), session_factory(engine).begin() as s:
        kept.write(s, "hf:alice", big)
    assert stored(engine, "hf:alice") is None
    # The browser's bounds are the table's: one place says them.
    assert (history.MAX_CHATS, history.MAX_STORE_CHARS) == (kept.MAX_CHATS, kept.MAX_CHARS)


def test_two_devices_lists_merge_newest_first_and_the_latest_change_wins() -> None:
    laptop = [saved(1, updated="2026-01-03T00:00:00+00:00", title="ノートで変えた"), saved(2)]
    phone = [saved(3, updated="2026-01-02T00:00:00+00:00"), saved(1, updated="2026-01-01T00:00:00+00:00")]
    merged, dropped = history.merge(laptop, phone)
    assert [(c.id[-1], c.title) for c in merged] == [("1", "ノートで変えた"), ("3", "会話 3"), ("2", "会話 2")]
    assert dropped == 0


def test_a_merge_keeps_the_browser_bounds() -> None:
    many = [saved(i, updated=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00") for i in range(history.MAX_CHATS)]
    more = [saved(1000 + i, updated=f"2026-02-01T00:00:{i:02d}+00:00") for i in range(5)]
    merged, dropped = history.merge(many, more)
    assert len(merged) == history.MAX_CHATS and dropped == 5
    assert merged[0].id == f"{1004:012x}"  # the newest first
    assert f"{0:012x}" not in {c.id for c in merged}  # the oldest went


def test_erasure_removes_kept_conversations_and_is_recorded(engine: Engine) -> None:
    with session_factory(engine).begin() as s:
        audit.accept(s, identity="hf:alice", terms_id="tou", terms_sha256="a" * 64, user_agent="UA",
                     client_hash=None, contact=audit.Contact(name="A", email="a@example.jp", affiliation="N",
                                                             purpose="p"))  # fmt: skip
    keep(engine, "hf:alice", [saved(1), saved(2), saved(3)])
    keep(engine, "hf:bob", [saved(4)])
    with session_factory(engine).begin() as s:
        erasure = audit.erase_person(s, identity="hf:alice", by="admin:token")
    assert (erasure.contacts, erasure.conversations) == (1, 3)
    assert stored(engine, "hf:alice") is None and stored(engine, "hf:bob") is not None
    with engine.connect() as conn:
        events = conn.execute(text("SELECT kind, identity, reason, detail FROM events ORDER BY seq")).fetchall()
    assert events[-1] == ("erased", "hf:alice", "admin:token", "1 contact record(s), 3 kept conversation(s)")
    with session_factory(engine)() as s:
        assert audit.verify(s).ok
    # An account that kept conversations but never left contact fields is erased (and recorded) too.
    with session_factory(engine).begin() as s:
        assert audit.erase_person(s, identity="hf:bob").detail() == "0 contact record(s), 1 kept conversation(s)"
        assert not audit.erase_person(s, identity="hf:bob")  # nothing left: nothing recorded
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events WHERE kind = 'erased'")).scalar() == 2


def test_db_erase_removes_kept_conversations(engine: Engine, database_url: str) -> None:
    keep(engine, "hf:carol", [saved(1), saved(2)])
    run = subprocess.run(
        [sys.executable, "-m", "db", "erase", "--identity", "hf:carol"],
        cwd=ROOT, capture_output=True, text=True, env=os.environ | {"LLMJP_DATABASE_URL": database_url},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "erased 0 contact record(s), 2 kept conversation(s)" in run.stdout
    assert stored(engine, "hf:carol") is None
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT identity, reason FROM events WHERE kind = 'erased'")).fetchall()
    assert rows == [("hf:carol", "operator")]
