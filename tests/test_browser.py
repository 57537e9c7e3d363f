"""One real-browser walk through the page: locked chat, accept, a streamed Japanese reply."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, ARTIFACTS, CHROMIUM, FLAGS, RunningApp

pytestmark = pytest.mark.browser


def fill_form(page, name: str, email: str, *, agree: bool = True) -> None:
    """Fill the acceptance form (Japanese page)."""
    page.get_by_label("氏名 *").fill(name)
    page.get_by_label("メールアドレス *").fill(email)
    page.get_by_label("所属 *").fill("例示大学")
    page.get_by_label("利用目的 *").fill("動作確認")
    if agree:
        page.get_by_label("上記の利用規約に同意します *").check()


def accept(page, name: str = "例 太郎", email: str = "example@example.com") -> None:
    """Accept the terms on the page and wait for the chat to open."""
    from playwright.sync_api import expect

    fill_form(page, name, email)
    page.get_by_role("button", name="同意する", exact=True).click()
    expect(page.get_by_role("tab", name="チャット", exact=True)).to_have_attribute(
        "aria-selected", "true", timeout=15_000
    )


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium-headless-shell is required (./dev test installs it)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        context = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 1400})
        yield context.new_page()
        browser.close()


def test_locked_accept_and_stream(running_app: RunningApp, page) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(running_app.url, wait_until="load")
    chat_tab = page.get_by_role("tab", name="チャット(要同意)")
    expect(chat_tab).to_be_disabled()
    expect(page.get_by_text("第1条(利用許諾)").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "browser-1-locked.png"), full_page=True)

    # Accepting with the box unticked is refused, beside the box, and keeps the chat locked.
    fill_form(page, "例 太郎", "example@example.com", agree=False)
    page.get_by_role("button", name="同意する", exact=True).click()
    expect(page.locator("#field-agree")).to_contain_text("同意する場合はチェックしてください", timeout=15_000)
    expect(chat_tab).to_be_disabled()

    page.get_by_label("上記の利用規約に同意します *").check()
    page.get_by_role("button", name="同意する", exact=True).click()
    expect(page.get_by_role("tab", name="チャット", exact=True)).to_have_attribute(
        "aria-selected", "true", timeout=15_000
    )

    # Record every text the reply shows, to see it arrive in pieces.
    page.evaluate(
        """() => {
          window.__replies = [];
          new MutationObserver(() => {
            const bots = document.querySelectorAll('[data-testid="bot"]');
            if (bots.length) window.__replies.push(bots[bots.length - 1].innerText);
          }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }"""
    )
    box = page.locator("#chat-message textarea")
    box.fill("富士山について教えて")
    box.press("Enter")
    expect(page.locator('[data-testid="user"]').last).to_contain_text("富士山について教えて", timeout=15_000)
    expect(page.locator('[data-testid="bot"]').last).not_to_be_empty(timeout=60_000)
    expect(page.locator("#send")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "browser-2-chat.png"), full_page=True)

    seen = [t for t in page.evaluate("window.__replies") if t.strip()]
    final = page.locator('[data-testid="bot"]').last.inner_text()
    assert final.strip()
    assert len(set(seen)) >= 2, "the reply should appear in several updates"

    # A returning browser is recognised by its receipt: no second acceptance.
    page.reload(wait_until="load")
    expect(page.get_by_role("tab", name="チャット", exact=True)).to_have_attribute(
        "aria-selected", "true", timeout=15_000
    )

    # The Terms tab tells a returning visitor when they accepted, instead of an empty form.
    page.get_by_role("tab", name="利用規約").click()
    expect(page.locator("#accepted-note")).to_contain_text("同意済み", timeout=15_000)
    expect(page.get_by_label("氏名 *")).to_be_hidden()
    # Withdrawing asks first, says what it keeps, then locks the chat at once and shows the form, empty.
    page.get_by_role("button", name="同意を撤回する…").click()
    confirm = page.get_by_text("監査ログから削除されません")
    expect(confirm).to_be_visible()
    page.get_by_role("button", name="やめる").click()
    expect(confirm).to_be_hidden()
    expect(page.get_by_role("tab", name="チャット", exact=True)).to_be_enabled()
    page.get_by_role("button", name="同意を撤回する…").click()
    page.get_by_role("button", name="撤回する", exact=True).click()
    expect(page.get_by_role("tab", name="チャット(要同意)")).to_be_disabled(timeout=15_000)
    expect(page.get_by_text("同意を撤回しました").first).to_be_visible()
    expect(page.get_by_label("氏名 *")).to_have_value("")
    expect(page.get_by_label("上記の利用規約に同意します *")).not_to_be_checked()


def test_admin_tab_shows_contact_fields_as_text(running_app: RunningApp, page) -> None:
    from playwright.sync_api import expect

    hostile = "<img src=x onerror=alert(1)>"
    running_app.client().predict(
        name=hostile, email="x@example.jp", affiliation="<b>bold</b>", purpose="p", agree=True, api_name="/accept_terms"
    )
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(running_app.url, wait_until="load")
    admin_tab = page.get_by_role("tab", name="管理", exact=True)
    expect(admin_tab).to_have_count(0)  # hidden from everyone who is not an administrator

    page.get_by_text("管理者", exact=True).click()
    page.get_by_label("管理者トークン").fill("wrong")
    page.get_by_role("button", name="管理者として開く").click()
    expect(page.get_by_text("Only administrators").first).to_be_visible()
    expect(admin_tab).to_have_count(0)

    page.get_by_label("管理者トークン").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="管理者として開く").click()
    admin_tab.click()
    table = page.get_by_label("最新のイベント")
    # (The table keeps hidden copies of its cells for measuring; look at the shown ones.)
    expect(table.get_by_text(hostile).filter(visible=True).first).to_be_visible(timeout=15_000)
    expect(table.get_by_text("<b>bold</b>").filter(visible=True).first).to_be_visible()
    assert table.locator("img").count() == 0 and table.locator("b").count() == 0
    page.wait_for_timeout(500)
    for close in page.get_by_role("button", name="Close").all():
        close.click()
    page.screenshot(path=str(ARTIFACTS / "browser-3-admin.png"), full_page=True)
    assert dialogs == []


def test_a_waiting_visitor_sees_their_place_then_the_reply(tmp_path: Path, models_dir: Path, page) -> None:
    """Another visitor holds the model; this one's status line shows the queue, then clears as the reply comes."""
    from playwright.sync_api import expect

    from tests.conftest import launch
    from tests.test_app_http import FORM, GOOD
    from tests.test_queue_http import Held
    from webapp.settings import Settings

    holder: list[Held] = []
    # One reply at a time (no batching), so the second visitor waits in the queue.
    settings = Settings(data_dir=tmp_path / "app", models="tiny", hub_offline=True, max_batch=1)
    app = launch(settings, models_dir, wrap=lambda backend: holder.append(Held(backend)) or holder[0])
    held = holder[0]
    try:
        other = app.client()
        other.predict(**FORM, api_name="/accept_terms")
        job = other.submit("先に来た人", **(GOOD | {"max_new_tokens": 8}), api_name="/chat")
        assert held.entered.acquire(timeout=30)

        page.goto(app.url, wait_until="load")
        accept(page, "例 花子", "hanako@example.com")
        box = page.locator("#chat-message textarea")
        box.fill("後から来た人")
        box.press("Enter")
        # The pending reply itself says it is being written, and where it waits.
        pending = page.locator('[data-testid="bot"]').last
        expect(pending).to_contain_text("生成中…", timeout=15_000)
        expect(pending).to_contain_text("順番待ち: 1 番目です。")
        page.screenshot(path=str(ARTIFACTS / "browser-4-queued.png"), full_page=True)

        held.go.set()
        assert job.result(timeout=60)
        expect(page.locator("#send")).to_be_visible(timeout=60_000)
        expect(page.locator("#chatbot")).not_to_contain_text("順番待ち")
        expect(page.locator("#chatbot")).not_to_contain_text("生成中…")
    finally:
        held.go.set()
        app.demo.close()
