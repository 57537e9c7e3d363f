"""Kept conversations on the server for a signed-in visitor who opts in, in a real browser: two devices (two
browser contexts) of the same account see the same list; an anonymous visitor sees no option and the server
keeps nothing of theirs; turning the option off, and an administrator's erasure, delete the server's copy.

Gradio mocks the Hugging Face login off Spaces with the local account from ``whoami()``; the hub cannot be
reached here, so that call is mocked (tests.conftest.mock_hf_login)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningApp, launch, mock_hf_login
from tests.test_browser import accept
from tests.test_chat_browser import ask
from tests.test_history_browser import LAPTOP, reload, visitor

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningApp]:
    from webapp.settings import Settings

    patch = pytest.MonkeyPatch()
    mock_hf_login(patch)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("kept"),
        models="tiny",
        hub_offline=True,
        oauth=True,
        admin_users="alice",
        rate_chat="1000/minute",
        rate_chat_address="1000/minute",
        rate_consent_address="1000/minute",
    )
    running = launch(settings, models_dir)
    try:
        yield running
    finally:
        running.demo.close()
        patch.undo()


def signed_in(browser, app: RunningApp):
    """A new device signed in as alice: Gradio's login route sets the session cookie and comes back."""
    context = browser.new_context(locale="ja-JP", viewport=LAPTOP)
    page = context.new_page()
    page.goto(app.url.rstrip("/") + "/login/huggingface", wait_until="load")
    return context, page


def new_chat(page, kept: int) -> None:
    """Start a new conversation once the open one is kept (``kept`` listed): the last of the events after a
    reply keeps it, a moment after Send shows again, and a New chat pressed before then leaves it unlisted."""
    from playwright.sync_api import expect

    expect(page.locator("#chat-list label")).to_have_count(kept, timeout=10_000)
    page.locator("#new-chat").click()
    expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(0, timeout=10_000)


def rows(app: RunningApp) -> list[tuple[str, int, str]]:
    with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as db:
        return db.execute("SELECT identity, count, chats FROM kept_conversations ORDER BY identity").fetchall()


def counts(app: RunningApp, expected: list[tuple[str, int]], timeout: float = 10) -> None:
    """The server's rows reach the expected (identity, count) pairs: a save is answered before the page
    shows it, and a save or delete in flight may land a moment after the page changed."""
    deadline = time.monotonic() + timeout
    while (seen := [(r[0], r[1]) for r in rows(app)]) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen == expected


def test_two_devices_of_one_account_share_the_list_and_anonymous_visitors_get_nothing(browser, app) -> None:
    from playwright.sync_api import expect

    option = "#history-server input[type=checkbox]"
    laptop, page = signed_in(browser, app)
    phone = anonymous = None
    try:
        accept(page)
        expect(page.locator(option)).to_be_visible(timeout=15_000)
        expect(page.locator(option)).not_to_be_checked()  # off by default
        ask(page, "ノートの一つ目")
        new_chat(page, kept=1)
        ask(page, "ノートの二つ目")
        # Both kept in this browser, and nothing on the server before the visitor opts in.
        expect(page.locator("#chat-list label")).to_have_count(2, timeout=10_000)
        assert rows(app) == []
        page.locator(option).check()
        expect(page.get_by_text("会話をサーバーにも保存しました")).to_be_visible(timeout=10_000)
        counts(app, [("hf:alice", 2)])
        new_chat(page, kept=2)
        ask(page, "ノートの三つ目")  # from now on each save goes to the server too
        # The list shows it once the save (server first, then this browser) has returned.
        expect(page.locator("#chat-list label")).to_have_count(3, timeout=10_000)
        counts(app, [("hf:alice", 3)])

        # Another device, same account: the same list, with the option on.
        phone, other = signed_in(browser, app)
        expect(other.get_by_role("tab", name="チャット", exact=True)).to_have_attribute(
            "aria-selected", "true", timeout=15_000
        )
        expect(other.locator(option)).to_be_checked(timeout=15_000)
        expect(other.locator("#chat-list label")).to_have_text(
            ["ノートの三つ目", "ノートの二つ目", "ノートの一つ目"], timeout=15_000
        )
        # Deleted there, gone here after a reload: the server's list is the one that counts.
        other.locator("#chat-list label", has_text="ノートの一つ目").click()
        other.locator("#chat-manage").get_by_text("この会話を管理").click()
        other.locator("#chat-delete").click()
        expect(other.locator("#chat-list label")).to_have_count(2, timeout=10_000)
        counts(app, [("hf:alice", 2)])
        reload(page)
        expect(page.locator("#chat-list label")).to_have_text(["ノートの三つ目", "ノートの二つ目"], timeout=15_000)

        # An anonymous visitor: no option, and however many conversations they keep, no row on the server.
        anonymous, stranger = visitor(browser, app, LAPTOP)
        ask(stranger, "匿名の一つ目")
        new_chat(stranger, kept=1)
        ask(stranger, "匿名の二つ目")
        expect(stranger.locator("#chat-list label")).to_have_count(2, timeout=10_000)
        expect(stranger.locator(option)).to_have_count(0)
        assert [r[0] for r in rows(app)] == ["hf:alice"]
        with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            dump = json.dumps([db.execute(f"SELECT * FROM {t}").fetchall() for t in tables], ensure_ascii=False)
        assert "匿名の" not in dump

        # Off: the server's copy is deleted; this browser keeps its own.
        other.locator(option).uncheck()
        expect(other.get_by_text("サーバー上の会話のコピーを削除しました")).to_be_visible(timeout=10_000)
        counts(app, [])
        expect(other.locator("#chat-list label")).to_have_count(2)
        reload(page)
        expect(page.locator(option)).not_to_be_checked(timeout=15_000)
    finally:
        for context in (laptop, phone, anonymous):
            if context is not None:
                context.close()
