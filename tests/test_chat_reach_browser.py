"""The chat page in a real browser: what chatting needs in reach at 1280×720 and 390×844, nothing typed lost,
models that cannot load here marked with the reason, the Terms tab for a returning visitor, the exact prompt,
maths and code."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, RunningApp, launch
from tests.test_browser import accept
from tests.test_chat_browser import ask, send, wait_idle

pytestmark = pytest.mark.browser

FAIL = "途中で失敗させる"
LAPTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}
# Pictographs that need an emoji font (the page must not rely on one).
EMOJI = re.compile("[\U0001f300-\U0001faff\u23e9-\u23fa\u2705\u274c\u2b50\ufe0f]")


class FailsMidReply:
    """The real backend, except that a reply to ``FAIL`` breaks after it was admitted (a lost GPU, say)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def generate(self, spec, messages, options, emit, stop, **kwargs) -> object:
        text = getattr(messages, "text", None) or json.dumps(messages, ensure_ascii=False)
        if FAIL in text:
            emit("書きかけ")
            raise RuntimeError("the device went away")
        return self.inner.generate(spec, messages, options, emit, stop, **kwargs)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningApp]:
    from webapp.settings import Settings

    # Every model is offered; offline, with an empty hub cache, only the tiny ones can load here.
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("reach"),
        models="all",
        default_model="tiny-llama",
        hub_offline=True,
        hub_cache=tmp_path_factory.mktemp("empty-hub-cache"),
        rate_chat="1000/minute",
        rate_chat_address="1000/minute",
        rate_consent_address="1000/minute",
    )
    running = launch(settings, models_dir, wrap=FailsMidReply)
    try:
        yield running
    finally:
        running.demo.close()


def visitor(browser, app: RunningApp, viewport: dict, **options):
    """A new visitor who has just accepted the terms; the page opens on the chat."""
    context = browser.new_context(locale="ja-JP", viewport=viewport, **options)
    page = context.new_page()
    page.goto(app.url, wait_until="load")
    accept(page)
    return context, page


def in_view(page, selector: str) -> None:
    """The element is wholly inside the window, as it is now scrolled."""
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    assert box and size, selector
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"] + 1, f"{selector} is outside: {box}"
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"] + 1, f"{selector} is outside: {box}"


@pytest.mark.parametrize(
    ("name", "viewport", "options"),
    [
        ("laptop", LAPTOP, {}),
        ("phone", PHONE, {"is_mobile": True, "has_touch": True, "device_scale_factor": 2}),
    ],
)
def test_everything_for_chatting_is_in_reach(browser, app: RunningApp, name: str, viewport, options) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, viewport, **options)
    try:
        # Before anything is said: the model, the conversation, the box and Send, without scrolling.
        for selector in ("#model-picker", "#chat-message textarea", "#send"):
            in_view(page, selector)
        for i in range(3):
            ask(page, f"長い会話 {i}。" + "富士山について詳しく教えてください。" * 3)
        # A long conversation scrolls inside itself; the box and Send stay pinned at the bottom.
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        for selector in ("#chat-message textarea", "#send"):
            in_view(page, selector)
        page.evaluate("window.scrollTo(0, 0)")
        for selector in ("#model-picker", "#chat-message textarea", "#send"):
            in_view(page, selector)
        # The reply note is one short line: the short model name, tokens and speed; details on opening.
        title = page.locator("#chatbot").get_by_role("button", name=re.compile("tiny-llama")).last
        expect(title).to_be_visible()
        assert "ランダム重み" not in title.inner_text() and "random-weight" not in title.inner_text()
        lines = title.locator(".md p").evaluate(
            """(el) => { const r = document.createRange(); r.selectNodeContents(el);
               return new Set([...r.getClientRects()].filter((b) => b.width > 0).map((b) => Math.round(b.top))).size; }"""
        )
        assert lines == 1, f"the note takes {lines} lines: {title.inner_text()}"
        # The language switch is small and leaves the title on one line.
        switch = page.locator("#language").bounding_box()
        heading = page.locator("#page-header h1").bounding_box()
        assert switch and switch["height"] < 44 and heading and heading["height"] < 48
        # Nothing on the page needs an emoji font; the copy tooltip speaks the page's language.
        assert not EMOJI.findall(page.locator("body").inner_text())
        chatbot = page.locator("#chatbot")
        expect(chatbot.get_by_role("button", name="メッセージをコピー").first).to_be_attached()
        assert chatbot.get_by_role("button", name=re.compile("Copy", re.I)).count() == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"chat-reach-{name}.png"))
    finally:
        context.close()


def test_a_reply_that_fails_after_admission_gives_back_what_was_typed(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, LAPTOP)
    try:
        ask(page, "最初の質問")
        before = [t.strip() for t in page.locator('#chatbot [data-testid="user"]').all_inner_texts()]
        send(page, FAIL + "。この文章は消えてはいけません。")
        expect(page.get_by_text("エラー").first).to_be_visible(timeout=30_000)
        box = page.locator("#chat-message textarea")
        expect(box).to_have_value(FAIL + "。この文章は消えてはいけません。", timeout=10_000)
        wait_idle(page)
        assert [t.strip() for t in page.locator('#chatbot [data-testid="user"]').all_inner_texts()] == before
    finally:
        context.close()


def test_models_that_cannot_load_here_are_marked_with_the_reason(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, LAPTOP)
    try:
        picker = page.locator("#model-picker")
        picker.locator("input").click()
        options = page.get_by_role("option")
        expect(options.filter(has_text="tiny-llama")).to_have_count(1)
        labels = options.all_inner_texts()
        marked = [o for o in labels if "利用不可" in o]
        assert any("172B" in o for o in marked) and any("1.8B instruct4" in o for o in marked)
        assert not any("tiny" in o for o in marked)  # what can load is offered plainly
        options.filter(has_text="LLM-jp-3.1 1.8B instruct4").first.click()
        licence = page.locator("#model-licence")
        expect(licence).to_contain_text("利用できません", timeout=10_000)
        expect(licence).to_contain_text("ダウンロードできません")
        send(page, "この下書きは残ります")
        expect(page.get_by_text("ダウンロードできません").nth(1)).to_be_visible(timeout=10_000)
        expect(page.locator("#chat-message textarea")).to_have_value("この下書きは残ります")
        assert page.locator('#chatbot [data-testid="user"]').count() == 0
        # The largest does not fit this machine at all, and says so with the figures.
        picker.locator("input").click()
        page.get_by_role("option").filter(has_text="172B").first.click()
        expect(licence).to_contain_text("載りません", timeout=10_000)
        expect(licence).to_contain_text("GB")
    finally:
        context.close()


def test_the_terms_tab_greets_a_returning_visitor(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    from webapp.gate.terms import Terms

    context, page = visitor(browser, app, LAPTOP)
    try:
        page.reload(wait_until="load")
        expect(page.get_by_role("tab", name="チャット", exact=True)).to_have_attribute(
            "aria-selected", "true", timeout=15_000
        )
        page.get_by_role("tab", name="利用規約", exact=True).click()
        note = page.locator("#accepted-note")
        expect(note).to_contain_text("同意済み", timeout=10_000)
        expect(note).to_contain_text(Terms.load().sha256[:12])
        expect(note).to_contain_text(re.compile(r"20\d\d-\d\d-\d\d"))
        expect(page.locator("#field-name")).to_be_hidden()
        expect(page.get_by_role("button", name="同意する", exact=True)).to_be_hidden()
        page.screenshot(path=str(ARTIFACTS / "terms-returning.png"))
        # Withdrawing brings the form back, for a new acceptance.
        page.get_by_role("button", name="同意を撤回する…").click()
        page.get_by_role("button", name="撤回する", exact=True).click()
        expect(page.locator("#field-name")).to_be_visible(timeout=10_000)
        expect(note).to_be_hidden()
    finally:
        context.close()


def test_each_reply_shows_the_exact_prompt_and_maths_and_code_render(browser, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, {"width": 1280, "height": 1000})
    try:
        ask(page, "質問です: $x^2 + y^2 = z^2$ を説明して\n\n```python\nprint('こんにちは')\n```")
        user = page.locator('#chatbot [data-testid="user"]').last
        expect(user.locator(".katex").first).to_be_visible()  # inline maths, typeset
        expect(user.locator("pre code")).to_contain_text("print('こんにちは')")
        expect(user.locator("button.copy_code_button").first).to_be_attached()  # copy on code blocks
        note = page.locator('#chatbot [data-testid="bot"]').filter(has_text="tiny-llama").last
        note.get_by_text("tiny-llama").first.click()
        shown = note.get_by_text(re.compile("プロンプトを表示"))
        expect(shown).to_be_visible()
        shown.click()
        prompt = note.locator(".prompt-view pre").first
        expect(prompt).to_be_visible()
        text = prompt.inner_text()
        assert "<s>" in text and "### 指示:" in text and "x^2 + y^2 = z^2" in text
        tokens = int(re.search(r"(\d+) トークン", shown.inner_text()).group(1))
        assert tokens > 10
        page.screenshot(path=str(ARTIFACTS / "chat-prompt-view.png"))
    finally:
        context.close()


@pytest.mark.parametrize(
    ("name", "viewport", "options"),
    [
        ("laptop", LAPTOP, {}),
        ("phone", PHONE, {"is_mobile": True, "has_touch": True, "device_scale_factor": 2}),
    ],
)
def test_the_rating_comment_opens_beside_its_reply(browser, app: RunningApp, name: str, viewport, options) -> None:
    from playwright.sync_api import expect

    context, page = visitor(browser, app, viewport, **options)
    try:
        for text in ("一つ目の質問", "二つ目の質問", "三つ目の質問"):
            ask(page, text)
        chatbot = page.locator("#chatbot")
        # A dislike on the second of the three replies (each message has its row of buttons).
        rated = chatbot.locator(".message-buttons").nth(3)
        rated.get_by_role("button", name="よくないね").click()
        comment = page.locator("#rating-comment").first
        expect(comment.get_by_label("コメント(任意)")).to_be_visible(timeout=10_000)
        # Right under the rated reply's buttons, above the next message, wholly in view; the box and Send too.
        # Measured in one go, within one frame: separate reads could straddle a scroll of the conversation.
        snapshot = """() => {
          const rect = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; };
          const rows = document.querySelectorAll('#chatbot .message-buttons');
          return {
            box: rect(document.querySelector('#rating-comment')), above: rect(rows[3]),
            below: rect(document.querySelectorAll('#chatbot [data-testid="user"]')[2]),
            pinned: rect(document.querySelector('#composer')),
            scroll: document.querySelector('#chatbot .bubble-wrap').scrollTop,
          };
        }"""

        def placed(at: dict) -> bool:
            box, above, below, pinned = at["box"], at["above"], at["below"], at["pinned"]
            return (
                0 <= box["top"] - above["bottom"] <= 16
                and box["bottom"] <= below["top"]
                and box["top"] >= 0 and box["bottom"] <= pinned["top"]
            )  # fmt: skip

        deadline = time.monotonic() + 5
        while not placed(at := page.evaluate(snapshot)) and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        if not placed(at):
            seen = []
            for _ in range(5):  # how it moves, if it does
                page.wait_for_timeout(50)
                seen.append(page.evaluate(snapshot))
            pytest.fail(f"the comment is not beside its reply: {at}, then {seen}")
        for selector in ("#chat-message textarea", "#send"):
            in_view(page, selector)
        # The rated reply itself shows above it, and its pressed button is named in the page's language.
        reply = chatbot.locator('[data-testid="bot"]').nth(3)
        reply_box, box = reply.bounding_box(), comment.bounding_box()
        assert reply_box and box and reply_box["y"] + reply_box["height"] <= box["y"] and reply_box["y"] >= 0
        expect(rated.get_by_role("button", name="低評価しました")).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"rating-beside-{name}.png"))
        comment.get_by_label("コメント(任意)").fill("二つ目の返答について")
        comment.get_by_role("button", name="評価を送る").click()
        expect(page.get_by_text("評価を記録しました").first).to_be_visible(timeout=10_000)
        expect(comment).to_be_hidden()
    finally:
        context.close()
