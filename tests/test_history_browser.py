"""Conversations kept in the visitor's browser, and versions behind arrows, in a real browser: a reload with two
conversations, opening, renaming, searching and deleting them, versions after an edit and a retry, and a check
that the server's database holds none of it."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, RunningApp, launch
from tests.test_browser import CHROMIUM, FLAGS, accept
from tests.test_chat_browser import ask, set_slider, toggle_sampling, user_turns, wait_idle

pytestmark = pytest.mark.browser

LAPTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningApp]:
    from webapp.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("history"),
        models="tiny",
        hub_offline=True,
        rate_chat="1000/minute",
        rate_chat_address="1000/minute",
        rate_consent_address="1000/minute",
    )
    running = launch(settings, models_dir)
    try:
        yield running
    finally:
        running.demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def visitor(browser, app: RunningApp, viewport: dict, **options):
    context = browser.new_context(locale="ja-JP", viewport=viewport, **options)
    page = context.new_page()
    page.goto(app.url, wait_until="load")
    accept(page)
    return context, page


def listed(page) -> list[str]:
    return [t.strip() for t in page.locator("#chat-list label").all_inner_texts()]


def reload(page) -> None:
    from playwright.sync_api import expect

    page.reload(wait_until="load")
    expect(page.get_by_role("tab", name="チャット", exact=True)).to_have_attribute(
        "aria-selected", "true", timeout=15_000
    )


def test_two_conversations_survive_a_reload_with_their_model_and_settings(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, LAPTOP)
    try:
        ask(page, "一つ目の会話です")
        expect(page.locator("#chat-list label")).to_have_count(1, timeout=10_000)
        page.locator("#new-chat").click()
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(0)
        # The second conversation on another model, with its own sampling.
        page.locator("#model-picker input").click()
        page.get_by_role("option", name=re.compile("tiny-gptneox")).click()
        set_slider(page, "top_k", 7)
        ask(page, "二つ目の会話です")
        expect(page.locator("#chat-list label")).to_have_count(2, timeout=10_000)
        assert listed(page) == ["二つ目の会話です", "一つ目の会話です"]  # newest first

        # A reload reopens the chat that was open, with its model and sampling, and its reply notes.
        reload(page)
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_text(["二つ目の会話です"], timeout=15_000)
        expect(page.locator("#model-picker input")).to_have_value(re.compile("tiny-gptneox"))
        toggle_sampling(page)
        expect(page.locator("#slider-top_k input[type=number]")).to_have_value("7")
        toggle_sampling(page)
        expect(page.locator("#chatbot").get_by_role("button", name=re.compile("tiny-gptneox"))).to_be_visible()
        assert listed(page) == ["二つ目の会話です", "一つ目の会話です"]

        # Opening the other brings back its model and its defaults.
        page.locator("#chat-list label", has_text="一つ目の会話です").click()
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_text(["一つ目の会話です"], timeout=15_000)
        expect(page.locator("#model-picker input")).to_have_value(re.compile("tiny-llama"))
        toggle_sampling(page)
        expect(page.locator("#slider-top_k input[type=number]")).to_have_value("50")
        toggle_sampling(page)

        # Search finds a conversation by any of its words; rename; delete.
        page.locator("#chat-search input").fill("二つ目")
        expect(page.locator("#chat-list label")).to_have_count(1, timeout=10_000)
        page.locator("#chat-search input").fill("")
        expect(page.locator("#chat-list label")).to_have_count(2, timeout=10_000)
        page.locator("#chat-manage").get_by_text("この会話を管理").click()
        # Typed once the opened panel shows the open conversation's name, as a visitor would: Gradio mounts a
        # folded panel's fields as it opens, and a clean-clone run typed before that and lost the text to it.
        title = page.locator("#chat-title input")
        expect(title).to_have_value("一つ目の会話です")
        title.fill("富士山の話")
        expect(title).to_have_value("富士山の話")
        page.locator("#chat-rename").click()
        expect(page.locator("#chat-list label", has_text="富士山の話")).to_be_visible(timeout=10_000)
        reload(page)
        expect(page.locator("#chat-list label")).to_have_text(["二つ目の会話です", "富士山の話"], timeout=15_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "history-laptop.png"))

        page.locator("#chat-manage").get_by_text("この会話を管理").click()
        page.locator("#chat-delete").click()
        expect(page.locator("#chat-list label")).to_have_text(["二つ目の会話です"], timeout=10_000)
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(0)
        page.locator("#chat-delete-all").click()
        page.get_by_role("button", name="すべて削除する").click()
        expect(page.locator("#chat-list label")).to_have_count(0, timeout=10_000)
        reload(page)
        expect(page.locator("#chat-list label")).to_have_count(0)
    finally:
        context.close()
    # The server kept none of it: no conversation text anywhere in its database.
    with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dump = json.dumps([db.execute(f"SELECT * FROM {t}").fetchall() for t in tables], ensure_ascii=False)
    assert "一つ目の会話" not in dump and "二つ目の会話" not in dump and "富士山の話" not in dump


def arrows(page):
    return page.locator("#chatbot .version-arrows")


def test_versions_after_an_edit_and_a_retry(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, LAPTOP)
    chatbot = page.locator("#chatbot")
    try:
        ask(page, "琵琶湖について")
        ask(page, "もっと詳しく")
        first_reply = chatbot.locator('[data-testid="bot"]').last.inner_text()
        # Edit the first message: the conversation below it is replaced, and kept as version 1 of 2.
        chatbot.locator('[data-testid="user"]').first.hover()
        chatbot.get_by_role("button", name="編集").first.click()
        chatbot.locator("textarea").first.fill("琵琶湖の大きさは?")
        chatbot.get_by_role("button", name=re.compile("送信|Submit|Save|保存")).first.click()
        expect(chatbot.locator('[data-testid="user"]')).to_have_count(1, timeout=15_000)
        wait_idle(page)
        assert user_turns(page) == ["琵琶湖の大きさは?"]
        expect(arrows(page)).to_have_count(1, timeout=10_000)
        expect(arrows(page).first).to_contain_text("2/2")
        # Back to version 1: the whole conversation below it follows.
        arrows(page).first.get_by_role("button", name="前の版").click()
        expect(chatbot.locator('[data-testid="user"]')).to_have_count(2, timeout=10_000)
        assert user_turns(page) == ["琵琶湖について", "もっと詳しく"]
        assert chatbot.locator('[data-testid="bot"]').last.inner_text() == first_reply
        expect(arrows(page).first).to_contain_text("1/2")

        # A retry of the last reply makes a version of it too.
        chatbot.get_by_role("button", name="再試行").click()
        expect(page.locator("#stop")).to_be_visible(timeout=10_000)
        wait_idle(page)
        expect(arrows(page)).to_have_count(2, timeout=10_000)
        expect(arrows(page).last).to_contain_text("2/2")
        arrows(page).last.get_by_role("button", name="前の版").click()
        expect(arrows(page).last).to_contain_text("1/2", timeout=10_000)
        assert chatbot.locator('[data-testid="bot"]').last.inner_text() == first_reply
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "versions-laptop.png"))

        # The export writes the versions shown and notes the others.
        page.locator("#export").get_by_text("会話を書き出す").click()
        with page.expect_download() as got:
            page.locator("#export-json").click()
        data = json.loads(Path(got.value.path()).read_text(encoding="utf-8"))
        assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["琵琶湖について", "もっと詳しく"]
        assert [(v["shown"], v["count"], v["hidden"]) for v in data["other_versions"]] == [
            (1, 2, ["琵琶湖の大きさは?"]),
            (1, 2, ["もっと詳しく"]),
        ]
        # Versions are kept with the conversation across a reload.
        reload(page)
        expect(arrows(page)).to_have_count(2, timeout=15_000)
    finally:
        context.close()


def test_the_list_folds_away_on_a_phone(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        ask(page, "電話から")
        expect(page.locator("#chat-list")).not_to_be_in_viewport()
        page.screenshot(path=str(ARTIFACTS / "history-phone.png"))
    finally:
        context.close()


def overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_version_arrows_on_a_phone(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    chatbot = page.locator("#chatbot")
    try:
        ask(page, "瀬戸内海について")
        ask(page, "島の数は")
        chatbot.get_by_role("button", name="編集").first.tap()
        chatbot.locator("textarea").first.fill("瀬戸内海の広さは?")
        chatbot.get_by_role("button", name=re.compile("送信|Submit|Save|保存")).first.tap()
        expect(chatbot.locator('[data-testid="user"]')).to_have_count(1, timeout=15_000)
        wait_idle(page)
        nav = arrows(page).first
        expect(nav).to_contain_text("2/2", timeout=10_000)
        # Visible, clear of the message and its buttons, on the screen, and big enough for a finger.
        nav.scroll_into_view_if_needed()
        expect(nav).to_be_in_viewport()
        box = nav.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        first = chatbot.locator(".message-row.user-row").first
        for other in (first.locator('[data-testid="user"]'), chatbot.locator(".message-buttons").first):
            other_box = other.bounding_box()
            assert other_box and not overlap(box, other_box), (box, other_box)
        page.screenshot(path=str(ARTIFACTS / "versions-phone.png"))
        for button in nav.get_by_role("button").all():
            size = button.bounding_box()
            assert size and size["width"] >= 32 and size["height"] >= 32, size
        page.screenshot(path=str(ARTIFACTS / "versions-phone.png"))
        # A tap on ‹ brings back version 1 and the conversation below it.
        nav.get_by_role("button", name="前の版").tap()
        expect(chatbot.locator('[data-testid="user"]')).to_have_count(2, timeout=10_000)
        assert user_turns(page) == ["瀬戸内海について", "島の数は"]
        expect(arrows(page).first).to_contain_text("1/2")
        arrows(page).first.get_by_role("button", name="次の版").tap()
        expect(chatbot.locator('[data-testid="user"]')).to_have_count(1, timeout=10_000)
        assert user_turns(page) == ["瀬戸内海の広さは?"]
    finally:
        context.close()
