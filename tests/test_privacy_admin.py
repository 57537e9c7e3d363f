"""The privacy notice on the page, and erasure from the admin endpoint, over HTTP."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from gradio_client.exceptions import AppError

from tests.conftest import ADMIN_TOKEN, RunningApp, identity_of
from webapp.gate.privacy import notice

FORM = {
    "name": "消去 希望",
    "email": "erase.request@example.jp",
    "affiliation": "NII",
    "purpose": "研究",
    "agree": True,
}


def test_the_terms_tab_carries_the_privacy_notice(running_app: RunningApp) -> None:
    config = httpx.get(running_app.url.rstrip("/") + "/config", timeout=10).json()
    texts = "\n".join(str(c["props"].get("value", "")) for c in config["components"] if c.get("type") == "markdown")
    for lang, words in (("ja", ["個人情報の取り扱い", "管理者", "消去"]), ("en", ["Privacy notice", "administrators"])):
        assert notice(lang, None) in texts
        assert all(w in notice(lang, None) for w in words)
    # What it says is stored is what is stored: every contact column is named in it.
    with sqlite3.connect(running_app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(contacts)")]
    assert {"name", "email", "affiliation", "purpose", "user_agent"} <= set(columns)
    en = notice("en", 30)
    assert all(w in en for w in ("name", "email", "affiliation", "intended use", "User-Agent", "after 30 days"))
    assert "until you ask" in notice("en", None)


def test_admin_erases_one_person(running_app: RunningApp) -> None:
    client = running_app.client()
    _, receipt = client.predict(**FORM, api_name="/accept_terms")
    identity = identity_of(running_app, receipt)
    with pytest.raises(AppError, match="Only administrators"):
        client.predict(admin_token="wrong", identity=identity, api_name="/admin_erase")
    done = client.predict(admin_token=ADMIN_TOKEN, identity=identity, api_name="/admin_erase")
    assert "Erased 1 contact record(s)" in done
    report = json.loads(client.predict(admin_token=ADMIN_TOKEN, format="json", api_name="/admin_export"))
    mine = [r for r in report if r["identity"] == identity]
    assert [(r["contact"], r["email"], r["status"]) for r in mine] == [("erased", "", "accepted")]
    with sqlite3.connect(running_app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
        kinds = conn.execute("SELECT kind, reason FROM events WHERE identity = ? ORDER BY seq", (identity,)).fetchall()
    assert kinds == [("accepted", None), ("erased", "admin:token")]
    latest = client.predict(admin_token=ADMIN_TOKEN, limit=5, api_name="/admin_events")
    erased_row = next(r for r in latest if r["identity"] == identity and r["kind"] == "accepted")
    assert erased_row["email"] == "(消去済み / erased)"


def test_admin_erasure_removes_conversations_kept_on_the_server(running_app: RunningApp) -> None:
    from db import kept
    from db.engine import make_engine, session_factory

    database = running_app.settings.data_dir / "llmjp-demo.sqlite3"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with session_factory(engine).begin() as session:
            kept.write(session, "hf:dave", [{"id": "0123456789ab", "title": "消される会話"}])
            kept.write(session, "hf:erin", [{"id": "0123456789ab", "title": "残る会話"}])
    finally:
        engine.dispose()
    done = running_app.client().predict(admin_token=ADMIN_TOKEN, identity="hf:dave", api_name="/admin_erase")
    assert "Erased 0 contact record(s), 1 kept conversation(s)" in done
    assert "サーバーに保存された会話 1 件" in done
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT identity FROM kept_conversations").fetchall() == [("hf:erin",)]
        erased = conn.execute("SELECT reason, detail FROM events WHERE identity = 'hf:dave'").fetchall()
    assert erased == [("admin:token", "0 contact record(s), 1 kept conversation(s)")]


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_the_notice_says_where_conversations_are_kept(lang: str) -> None:
    text = notice(lang, None)
    words = {
        "ja": ["ブラウザの中", "サーバーに保存して他の端末でも使う", "既定ではオフ", "一覧ごと削除"],
        "en": ["your own browser", "Keep on the server and use on my other devices", "off by default"],
    }[lang]
    assert all(w in text for w in words), [w for w in words if w not in text]
