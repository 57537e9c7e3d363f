"""「比較」 in a real browser: two models answer one message side by side, the vote is stored with both models,
their revisions and sampling, a random pair is named only after the vote, and the admin's ranking counts it."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ADMIN_TOKEN, ARTIFACTS, RunningApp, launch
from tests.test_browser import accept
from tests.test_chat_browser import Lingering, set_slider

pytestmark = pytest.mark.browser


LAPTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def lingering() -> Lingering:
    return Lingering()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, lingering: Lingering) -> Iterator[RunningApp]:
    from webapp.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("compare"),
        models="tiny",
        hub_offline=True,
        admin_token=ADMIN_TOKEN,
        rate_chat="1000/minute",
        rate_chat_address="1000/minute",
        rate_consent_address="1000/minute",
    )
    running = launch(settings, models_dir, wrap=lingering.around)
    try:
        yield running
    finally:
        running.demo.close()


@pytest.fixture(scope="module")
def page(browser, app: RunningApp):
    context = browser.new_context(locale="ja-JP", viewport=LAPTOP)
    tab = context.new_page()
    tab.goto(app.url, wait_until="load")
    accept(tab)
    yield tab
    context.close()


def votes(app: RunningApp) -> list[tuple]:
    with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as db:
        return db.execute(
            "SELECT model_a, model_b, revision_a, sampling, verdict, blind, conversation FROM arena_votes ORDER BY id"
        ).fetchall()


def round_of(page, text: str) -> None:
    from playwright.sync_api import expect

    page.locator("#compare-message textarea").fill(text)
    page.locator("#compare-send").click()
    for side in ("a", "b"):
        expect(page.locator(f"#compare-{side} [data-testid='user']")).to_have_text([text], timeout=20_000)
    expect(page.locator("#compare-result")).to_contain_text("両方の返答が揃いました", timeout=60_000)
    for side in ("a", "b"):
        expect(page.locator(f"#compare-{side} [data-testid='bot']")).not_to_have_text([""])


def test_two_models_side_by_side_a_vote_stored_and_ranked(page, app: RunningApp) -> None:
    from gradio_client import Client
    from playwright.sync_api import expect

    page.locator("#compare").get_by_text("比較(2 つのモデルに同じメッセージ)").click()
    round_of(page, "日本の首都はどこですか")
    assert "tiny-llama" in page.locator("#compare-a").inner_text()
    page.locator("#compare-share input").check()
    page.locator("#compare-vote-a").click()
    expect(page.locator("#compare-result")).to_contain_text("投票を記録しました", timeout=10_000)
    (a, b, revision, sampling, verdict, blind, conversation), *_ = votes(app)
    assert (a, verdict, blind) == ("tiny-llama", "a", 0) and b != a
    # The tiny test models have no hub revision; a checkpoint's would be stored here.
    assert revision is None and json.loads(sampling)["top_k"] == 50
    assert json.loads(conversation)["a"][0] == {"role": "user", "content": "日本の首都はどこですか"}
    # A second vote on the same round is refused: one round, one vote.
    page.locator("#compare-vote-b").click()
    expect(page.get_by_text("投票できる比較がまだありません").first).to_be_visible(timeout=10_000)
    assert len(votes(app)) == 1

    # Drawn at random: the columns say only A and B until the vote names them.
    page.locator("#compare-share input").uncheck()
    page.locator("#compare-blind input").check()
    round_of(page, "富士山の高さは")
    labels = page.locator("#compare-a, #compare-b").locator("[data-testid='block-label']").all_inner_texts()
    assert [label.strip() for label in labels] == ["A", "B"]
    page.locator("#compare-vote-tie").click()
    expect(page.locator("#compare-result")).to_contain_text(re.compile("A は tiny-.*B は tiny-"), timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#compare").screenshot(path=str(ARTIFACTS / "compare-laptop.png"))
    stored = votes(app)
    assert len(stored) == 2 and stored[1][4:] == ("tie", 1, None)

    ranking = Client(app.url, verbose=False).predict(ADMIN_TOKEN, api_name="/admin_arena")
    assert {r["model_id"] for r in ranking["ranking"]} >= {"tiny-llama", stored[0][1]}
    assert len(ranking["votes"]) == 2


@pytest.mark.parametrize(
    ("name", "viewport", "options"),
    [
        ("laptop", LAPTOP, {}),
        ("phone", PHONE, {"is_mobile": True, "has_touch": True, "device_scale_factor": 2}),
    ],
)
def test_stop_ends_both_replies_and_the_next_round_works(
    browser, app: RunningApp, lingering: Lingering, name: str, viewport, options
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(locale="ja-JP", viewport=viewport, **options)
    page = context.new_page()
    page.goto(app.url, wait_until="load")
    accept(page)
    # Short replies, each then waiting for its Stop (Lingering): the tiny models would otherwise end
    # before a busy machine's browser has pressed Stop, and the round's conversation stays small.
    set_slider(page, "max_new_tokens", 16)
    before = len(votes(app))
    lingering.linger.set()
    try:
        page.locator("#compare").get_by_text("比較(2 つのモデルに同じメッセージ)").click()
        page.locator("#compare-message textarea").fill("長い返答をお願いします")
        page.locator("#compare-send").click()
        stop = page.locator("#compare-stop")
        expect(stop).to_be_visible(timeout=20_000)  # Send became Stop
        expect(page.locator("#compare-send")).to_be_hidden()
        # Each column's first round: its note (「生成中…」 while pending), then the reply once a token came.
        replies = [page.locator(f"#compare-{side} [data-testid='bot']").nth(1) for side in ("a", "b")]
        for reply in replies:
            expect(reply).not_to_have_text("", timeout=20_000)
        assert page.locator("#compare .loading-spinner").count() >= 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#compare").screenshot(path=str(ARTIFACTS / f"compare-stopping-{name}.png"))
        written = [reply.inner_text() for reply in replies]
        stop.click()
        # Both end within seconds; each keeps what it had, marked as stopped.
        for side in ("a", "b"):
            expect(page.locator(f"#compare-{side}").get_by_text("停止しました")).to_be_visible(timeout=5_000)
        expect(page.locator("#compare-send")).to_be_visible(timeout=5_000)
        expect(stop).to_be_hidden()
        assert page.locator("#compare .loading-spinner").count() == 0
        for reply, text in zip(replies, written, strict=True):
            shown = reply.inner_text()
            assert shown.startswith(text.strip()) and shown.strip(), (text, shown)
        expect(page.locator("#compare-result")).to_contain_text("停止しました")
        page.locator("#compare").screenshot(path=str(ARTIFACTS / f"compare-stopped-{name}.png"))
    finally:
        lingering.linger.clear()
    assert len(votes(app)) == before  # nothing is voted unless the visitor votes
    # The replies' places and the caller's slots were given back: the next round runs at once, after the
    # stopped one (the pair was not voted on, so the conversation goes on).
    page.locator("#compare-message textarea").fill("次の質問です")
    page.locator("#compare-send").click()
    for side in ("a", "b"):
        users = page.locator(f"#compare-{side} [data-testid='user']")
        expect(users).to_have_text(["長い返答をお願いします", "次の質問です"], timeout=20_000)
    expect(page.locator("#compare-result")).to_contain_text("両方の返答が揃いました", timeout=60_000)
    assert len(votes(app)) == before
    context.close()


def test_a_late_stop_ends_no_other_round(browser, app: RunningApp, lingering: Lingering) -> None:
    """A Stop names the round it was pressed for: one that arrives after that round ended (naming it) leaves
    the next round running, and no other visitor can stop a round."""
    from playwright.sync_api import expect

    # The app's own compare handlers, to see which rounds are running (their ids are in no visible text).
    compare = next(f.fn for f in app.demo.fns.values() if f.api_name == "page_compare_stop").__self__
    context = browser.new_context(locale="ja-JP", viewport=LAPTOP)
    page = context.new_page()
    page.goto(app.url, wait_until="load")
    accept(page)
    set_slider(page, "max_new_tokens", 16)
    page.locator("#compare").get_by_text("比較(2 つのモデルに同じメッセージ)").click()
    stop = page.locator("#compare-stop")
    lingering.linger.set()
    try:
        rounds = []
        for text in ("一回目", "二回目"):
            page.locator("#compare-message textarea").fill(text)
            page.locator("#compare-send").click()
            expect(stop).to_be_visible(timeout=20_000)
            ((rid, (session, stopped)),) = compare._stops.items()
            rounds.append((rid, session, stopped))
            if text == "一回目":
                stop.click()
                expect(page.locator("#compare-send")).to_be_visible(timeout=5_000)
        (first, session, _), (second, again, running) = rounds
        assert again == session and second != first

        def pressed_for(rid: str) -> list[dict]:
            # The columns as the page sends them while that round's notes are pending.
            note = {"title": "生成中…", "id": rid, "status": "pending"}
            return [
                {"role": "user", "content": [{"type": "text", "text": "一回目"}]},
                {"role": "assistant", "content": [], "metadata": note},
            ]

        # Stop's own handler, run on the server's loop as the event would run it: a raw request in the page's
        # session would take the page's event stream from it, so the caller is a stand-in with its session.
        def stop_as(who: str, rid: str) -> None:
            late = compare.stop(pressed_for(rid), pressed_for(rid), SimpleNamespace(session_hash=who))
            asyncio.run_coroutine_threadsafe(late, running._loop).result(timeout=10)

        stop_as(session, first)  # the first round's Stop, arriving late: the second round goes on
        stop_as("another-visitor", second)  # another visitor naming the second round: it goes on
        page.wait_for_timeout(500)
        assert not running.is_set()
        expect(stop).to_be_visible()
        # Its own Stop ends it.
        stop.click()
        expect(page.locator("#compare-a").get_by_text("停止しました")).to_have_count(2, timeout=5_000)
        assert running.is_set() and not compare._stops
    finally:
        lingering.linger.clear()
        context.close()
