"""The chat page in a real browser: generation state, stops, errors, retry/undo/edit, export, language, phone, IME."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, RunningApp, launch
from tests.test_browser import accept
from webapp.gate.terms import Terms

pytestmark = pytest.mark.browser

MAX_CHARS = 300
DOCS = Path(__file__).resolve().parents[1] / "docs"


class Lingering:
    """The real backend; while ``linger`` is set, a reply that has written all it may stays open until
    its visitor stops it.

    A tiny model writes 1,024 tokens in about 1.6 s, which a busy machine's browser can take to show
    Stop and click it: the reply then ended on its own, and the test lost a race the product did not.
    """

    def __init__(self) -> None:
        self.inner: object = None
        self.linger = threading.Event()

    def around(self, backend: object) -> Lingering:
        self.inner = backend
        return self

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # prepare, release, is_loaded ...

    def generate(self, spec, messages, options, emit, stop, **kwargs) -> object:
        outcome = self.inner.generate(spec, messages, options, emit, stop, **kwargs)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 120
        while self.linger.is_set() and not stop.wait(0.01) and time.monotonic() < deadline:
            pass
        return outcome


@pytest.fixture(scope="module")
def lingering() -> Lingering:
    return Lingering()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, lingering: Lingering) -> Iterator[RunningApp]:
    from webapp.settings import Settings

    # One visitor sends dozens of messages a minute here: the rate limits are not what is tested.
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("chatpage"),
        models="tiny",
        hub_offline=True,
        max_message_chars=MAX_CHARS,
        rate_chat="1000/minute",
        rate_chat_address="1000/minute",
        rate_consent_address="1000/minute",
        rate_events_address="100000/minute",
    )
    running = launch(settings, models_dir, wrap=lingering.around)
    try:
        yield running
    finally:
        running.demo.close()


DESKTOP = {"locale": "ja-JP", "viewport": {"width": 1280, "height": 1000}, "accept_downloads": True}


def open_chat(page, app: RunningApp) -> None:
    """Load the page as a visitor who has accepted: it opens on the chat tab."""
    from playwright.sync_api import expect

    page.goto(app.url, wait_until="load")
    expect(page.get_by_role("tab", name="チャット", exact=True)).to_have_attribute(
        "aria-selected", "true", timeout=15_000
    )


@pytest.fixture(scope="module")
def visitor(browser, app: RunningApp):
    """One visitor (a desktop Japanese browser) who accepted the terms once; the receipt stays in its storage."""
    context = browser.new_context(**DESKTOP)
    first = context.new_page()
    first.goto(app.url, wait_until="load")
    accept(first)
    first.close()
    yield context
    context.close()


@pytest.fixture
def page(visitor, app: RunningApp):
    """A new page of that visitor: its own conversation, on the chat tab; tests type at once."""
    tab = visitor.new_page()
    open_chat(tab, app)
    yield tab
    tab.close()


@pytest.fixture
def own_page(browser, app: RunningApp):
    """A visitor of their own, who has just accepted (their choices in storage touch no other test)."""
    context = browser.new_context(**DESKTOP)
    tab = context.new_page()
    tab.goto(app.url, wait_until="load")
    accept(tab)  # and type at once: nothing typed may be lost as the chat opens
    yield tab
    context.close()


def send(page, text: str) -> None:
    box = page.locator("#chat-message textarea")
    box.fill(text)
    box.press("Enter")


def wait_idle(page) -> None:
    """Wait until no reply is being written."""
    from playwright.sync_api import expect

    expect(page.locator("#chatbot").get_by_text("生成中…")).to_have_count(0, timeout=60_000)
    expect(page.locator("#send")).to_be_visible(timeout=10_000)
    expect(page.locator("#stop")).to_be_hidden()


def ask(page, text: str) -> None:
    """Send ``text`` and wait for the whole reply."""
    from playwright.sync_api import expect

    turns = page.locator('#chatbot [data-testid="user"]')
    before = turns.count()
    send(page, text)
    expect(turns).to_have_count(before + 1, timeout=15_000)
    wait_idle(page)


def no_error_state(page) -> None:
    """Neither the conversation nor the message box shows Gradio's error overlay."""
    for selector in ("#chatbot", "#chat-message"):
        assert page.locator(f"{selector} .error").count() == 0, f"{selector} is in an error state"
        assert "エラー" not in page.locator(selector).inner_text()


def user_turns(page) -> list[str]:
    return [t.strip() for t in page.locator('#chatbot [data-testid="user"]').all_inner_texts()]


def toggle_sampling(page) -> None:
    page.locator("#sampling").get_by_text("生成の設定", exact=True).click()


def messages(page) -> list[str | None]:
    """Every message as the chatbot labels it for screen readers (independent of folded notes)."""
    found = page.locator('#chatbot [data-testid="user"], #chatbot [data-testid="bot"]')
    return [m.get_attribute("aria-label") for m in found.all()]


def set_slider(page, name: str, value: int) -> None:
    from playwright.sync_api import expect

    toggle_sampling(page)
    number = page.locator(f"#slider-{name} input[type=number]")
    number.fill(str(value))
    number.press("Enter")
    toggle_sampling(page)
    expect(number).to_be_hidden()


@pytest.fixture
def replies_wait_for_stop(lingering: Lingering) -> Iterator[None]:
    lingering.linger.set()
    yield
    lingering.linger.clear()


@pytest.mark.usefixtures("replies_wait_for_stop")
def test_send_becomes_stop_and_twelve_stops_in_a_row(page) -> None:
    from playwright.sync_api import expect

    # Half the tiny model's context, so the growing conversation is trimmed rather than leaving a
    # reply only a few tokens; a reply that has written them all waits for its Stop (Lingering).
    # Twelve stops in two conversations prove the cycle repeats and that New chat starts it again;
    # thirty in three proved the same in a minute of the suite (about 1.9 s a stop on a busy machine).
    set_slider(page, "max_new_tokens", 1024)
    stopped = page.locator('#chatbot [data-testid="bot"]').filter(has_text="停止しました")
    for i in range(12):
        if i and i % 6 == 0:
            page.locator("#new-chat").click()
            expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(0)
        send(page, f"止めるテスト {i}")
        expect(page.locator("#stop")).to_be_visible(timeout=15_000)
        expect(page.locator("#send")).to_be_hidden()
        expect(page.locator("#chatbot").get_by_text("生成中…").first).to_be_visible(timeout=10_000)
        page.locator("#stop").click(force=True)  # at once: it was just seen visible
        wait_idle(page)
        expect(stopped).to_have_count(i % 6 + 1)  # each reply is marked as stopped
        no_error_state(page)
        assert user_turns(page)[-1] == f"止めるテスト {i}"
    assert page.locator(".toast-body.error").count() == 0
    page.screenshot(path=str(ARTIFACTS / "chat-stopped.png"))


def refused(page, text: str, message: str) -> None:
    """Send ``text``, see it refused with ``message``, and wait until that send has run to its end.

    Its end shows in the export (open, so in the page), which every send refreshes once it is done.
    """
    from playwright.sync_api import expect

    export = page.locator("#export-json")
    before = export.get_attribute("download")
    send(page, text)
    expect(page.get_by_text(message).first).to_be_visible(timeout=10_000)
    expect(export).not_to_have_attribute("download", before or "", timeout=10_000)


def test_empty_and_too_long_sends_keep_conversation_and_draft(page) -> None:
    from playwright.sync_api import expect

    ask(page, "こんにちは")
    before = messages(page)
    page.locator("#export").get_by_text("会話を書き出す", exact=True).click()

    refused(page, "   ", "メッセージを入力してください。")
    too_long = "あ" * (MAX_CHARS + 1)
    refused(page, too_long, "メッセージが長すぎます")
    assert page.locator("#chat-message textarea").input_value() == too_long  # the draft stays
    assert messages(page) == before  # the conversation stays as it was
    assert user_turns(page) == ["こんにちは"]
    no_error_state(page)
    expect(page.locator("#send")).to_be_visible()


def test_retry_undo_edit_new_chat_and_examples(page) -> None:
    from playwright.sync_api import expect

    chatbot = page.locator("#chatbot")
    # An empty chat offers Japanese examples; picking one sends it.
    chatbot.get_by_role("button", name=re.compile("富士山について教えて")).click()
    expect(chatbot.locator('[data-testid="user"]')).to_have_text(["富士山について教えて"], timeout=15_000)
    wait_idle(page)
    first = chatbot.locator('[data-testid="bot"]').last.inner_text()

    # Retry answers the same message again: still one user turn, a fresh reply.
    chatbot.get_by_role("button", name="再試行").click()
    expect(page.locator("#stop")).to_be_visible(timeout=10_000)
    wait_idle(page)
    assert user_turns(page) == ["富士山について教えて"]
    assert chatbot.locator('[data-testid="bot"]').last.inner_text() != first

    # Undo takes the message back into the box.
    chatbot.get_by_role("button", name="元に戻す").click()
    expect(chatbot.locator('[data-testid="user"]')).to_have_count(0, timeout=10_000)
    expect(page.locator("#chat-message textarea")).to_have_value("富士山について教えて")

    # Edit the last message: it is replaced and answered afresh.
    ask(page, "琵琶湖について")
    chatbot.locator('[data-testid="user"]').last.hover()
    chatbot.get_by_role("button", name="編集").click()
    editor = chatbot.locator("textarea").first
    editor.fill("琵琶湖の大きさは?")
    chatbot.get_by_role("button", name=re.compile("送信|Submit|Save|保存")).first.click()
    expect(page.locator("#stop")).to_be_visible(timeout=10_000)
    wait_idle(page)
    assert user_turns(page) == ["琵琶湖の大きさは?"]
    assert chatbot.locator('[data-testid="bot"]').count() >= 1

    # New chat empties the conversation and keeps consent: the chat still answers.
    page.locator("#new-chat").click()
    expect(chatbot.locator('[data-testid="user"]')).to_have_count(0)
    expect(chatbot.get_by_role("button", name=re.compile("富士山について教えて"))).to_be_visible()
    ask(page, "もう一度")
    assert user_turns(page) == ["もう一度"]


def test_each_reply_names_its_model_and_export_downloads_it(page, app: RunningApp) -> None:
    from playwright.sync_api import expect

    toggle_sampling(page)
    page.locator("#seed").get_by_role("textbox").fill("1234")  # at once, as the panel opens
    toggle_sampling(page)
    ask(page, "自己紹介してください")
    note = page.locator('#chatbot [data-testid="bot"]').filter(has_text="tiny-llama").last
    expect(note).to_be_visible()
    note.get_by_text("tiny-llama").first.click()  # open the quiet note: the settings behind the reply
    expect(note).to_contain_text("seed: 1234")

    page.locator("#export").get_by_text("会話を書き出す", exact=True).click()
    with page.expect_download() as info:
        page.locator("#export-json").click()
    # The file comes inside the page: the server keeps no copy of anyone's conversation.
    assert info.value.url.startswith("data:application/json") and info.value.suggested_filename.endswith(".json")
    data = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    reply = data["messages"][-1]
    assert data["messages"][0] == {"role": "user", "content": "自己紹介してください"}
    assert reply["role"] == "assistant" and reply["content"]
    assert reply["model_id"] == "tiny-llama" and "revision" in reply  # a local tiny model has no hub revision
    assert reply["sampling"]["seed"] == 1234
    assert reply["started_at"] and reply["seconds"] > 0 and data["exported_at"]
    assert set(reply["sampling"]) >= {"temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"}
    terms = Terms.load()
    assert data["terms"] == {"id": terms.id, "sha256": terms.sha256}
    with page.expect_download() as info:
        page.locator("#export-md").click()
    assert info.value.url.startswith("data:text/markdown") and info.value.suggested_filename.endswith(".md")
    markdown = Path(info.value.path()).read_text(encoding="utf-8")
    assert "自己紹介してください" in markdown and "tiny-llama" in markdown


def test_feedback_is_stored_with_model_and_sampling(page, app: RunningApp) -> None:
    from playwright.sync_api import expect

    ask(page, "評価のテスト")
    page.locator("#chatbot").get_by_role("button", name="よくないね").last.click()
    comment = page.get_by_label("コメント(任意)")
    expect(comment).to_be_visible(timeout=10_000)
    comment.fill("意味が通りません")
    page.get_by_label("この会話を評価と一緒に保存することを許可します").check()
    page.get_by_role("button", name="評価を送る").click()
    expect(page.get_by_text("評価を記録しました").first).to_be_visible(timeout=10_000)

    with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as db:
        rating, model_id, sampling, text, conversation = db.execute(
            "SELECT rating, model_id, sampling, comment, conversation FROM feedback ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert (rating, model_id, text) == ("down", "tiny-llama", "意味が通りません")
    assert json.loads(sampling)["top_k"] == 50
    shared = json.loads(conversation)
    assert shared[0] == {"role": "user", "content": "評価のテスト"}
    assert [t["role"] for t in shared] == ["user", "assistant"]  # up to and including the rated reply


# Words that stay as they are in either language: parameter names, model and
# licence names, the project's and products' names, identifiers.
NEUTRAL = {
    "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "llm", "jp", "LLM-jp",
    "nii", "beta1", "sha", "id", "api", "gradio", "english", "tiny", "llama", "mixtral", "gpt2", "gptneox",
    "json", "markdown", "test", "model", "random", "weights", "weight", "random-weight", "instruct", "b",
    "172b", "tou", "huggingface", "hugging", "face", "co", "https", "shift", "enter", "LLM-jp-3", "SHA-256",
    "llm-jp-3-172b-beta1-tou", "transformers", "k",
}  # fmt: skip


def _visible_text(page) -> str:
    """Everything a visitor can read, less the terms themselves and the conversation."""
    return page.evaluate(
        """() => {
          // The conversation itself (its messages and their actions) is content, written when it was said;
          // so are the titles of past conversations (their first messages).
          const skip = (el) => el.closest('.terms-text, [role="log"], #model-picker, '
            + '#language, .toast-wrap, .terms-hash, #chat-list');
          const out = [];
          const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
          while (walk.nextNode()) {
            const el = walk.currentNode.parentElement;
            if (!el || skip(el) || !el.checkVisibility()) continue;
            out.push(walk.currentNode.textContent);
          }
          for (const el of document.querySelectorAll('input[placeholder], textarea[placeholder]'))
            if (el.checkVisibility() && !skip(el)) out.push(el.placeholder);
          return out.join('\\n');
        }"""
    )


def _english_words(text: str) -> set[str]:
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9_\-]*", text))
    return {w for w in words if w.lower() not in NEUTRAL and w not in NEUTRAL and not re.fullmatch(r"[0-9a-f]+", w)}


def _japanese(text: str) -> set[str]:
    return set(re.findall(r"[\u3040-\u30ff\u4e00-\u9fff]+", text))


def show_tab(page, name: str, content) -> None:
    """Open a tab and wait until its content is drawn."""
    from playwright.sync_api import expect

    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    expect(content).to_be_visible()


def settled(page, read: Callable[[], set[str]]) -> set[str]:
    """``read()`` once it finds nothing, or what it finds after ten seconds: the server writes some words later."""
    deadline = time.monotonic() + 10
    while (found := read()) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    return found


def test_language_switch_changes_every_label(own_page) -> None:
    from playwright.sync_api import expect

    page = own_page  # the language chosen here is kept in this visitor's storage
    tabs = {
        ("利用規約", "Terms"): page.locator(".terms-hash"),
        ("チャット", "Chat"): page.locator("#chatbot"),
    }
    ask(page, "こんにちは")
    toggle_sampling(page)
    page.locator("#export").get_by_text("会話を書き出す", exact=True).click()
    japanese = {}
    for (tab, _), content in tabs.items():
        show_tab(page, tab, content)
        japanese[tab] = settled(page, lambda: _english_words(_visible_text(page)))
    assert japanese == {"利用規約": set(), "チャット": set()}, f"English left on the Japanese page: {japanese}"

    page.locator("#language").get_by_text("English").click()
    expect(page.get_by_role("tab", name="Chat", exact=True)).to_be_visible(timeout=10_000)
    english = {}
    for (_, tab), content in tabs.items():
        show_tab(page, tab, content)
        english[tab] = settled(page, lambda: _japanese(_visible_text(page)) - {"日本語"})
    assert english == {"Terms": set(), "Chat": set()}, f"Japanese left on the English page: {english}"
    page.screenshot(path=str(ARTIFACTS / "chat-english.png"), full_page=True)
    # The choice is kept for the next visit.
    page.reload(wait_until="load")
    expect(page.get_by_role("tab", name="Chat", exact=True)).to_be_visible(timeout=15_000)


def test_ime_confirmation_enter_never_sends(page) -> None:
    from playwright.sync_api import expect

    box = page.locator("#chat-message textarea")
    box.click()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.imeSetComposition", {"text": "にほんご", "selectionStart": 4, "selectionEnd": 4})
    page.keyboard.press("Enter")  # confirms the conversion
    cdp.send("Input.insertText", {"text": "日本語"})
    expect(box).to_have_value(re.compile("日本語"))  # the conversion stays in the box

    box.fill("一行目")
    box.press("End")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("二行目")
    assert box.input_value() == "一行目\n二行目"
    assert user_turns(page) == []
    page.keyboard.press("Enter")
    expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(1, timeout=10_000)
    # The one message sent is the one typed after the IME's Enter, and no empty send was refused before it.
    assert user_turns(page)[0].split() == ["一行目", "二行目"]
    assert page.locator(".toast-body").count() == 0
    wait_idle(page)


def _save_small_png(source: Path, target: Path, width: int) -> None:
    """A README-sized copy: scaled down and palette-quantised."""
    from PIL import Image

    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def test_phone_layout_and_readme_screenshots(browser, visitor, app: RunningApp) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(
        locale="ja-JP", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    phone = context.new_page()
    phone.goto(app.url, wait_until="load")
    chat_tab = phone.get_by_role("tab", name="チャット(要同意)")
    expect(chat_tab).to_be_visible(timeout=15_000)  # not hidden in an overflow menu
    box = chat_tab.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390
    # Nothing is wider than the screen: the terms hash wraps.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    hash_box = phone.locator(".terms-hash").bounding_box()
    assert hash_box and hash_box["x"] + hash_box["width"] <= 390

    accept(phone)
    picker = phone.locator("#model-picker").bounding_box()
    chatbot = phone.locator("#chatbot").bounding_box()
    assert picker and chatbot and picker["y"] + picker["height"] <= chatbot["y"], "model picker above the chat"
    expect(phone.locator("#slider-temperature")).to_be_hidden()  # sampling starts collapsed
    ask(phone, "日本の首都はどこですか?")
    send_box, new_box = phone.locator("#send").bounding_box(), phone.locator("#new-chat").bounding_box()
    assert send_box and new_box and abs(send_box["y"] - new_box["y"]) < 2, "the buttons share one row"
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    phone.evaluate("window.scrollTo(0, 0)")
    phone.screenshot(path=str(ARTIFACTS / "phone-chat.png"))

    page = visitor.new_page()
    page.set_viewport_size({"width": 1100, "height": 900})
    open_chat(page, app)
    ask(page, "富士山について教えて")
    page.screenshot(path=str(ARTIFACTS / "desktop-chat.png"), full_page=True)
    # The README's pictures: refreshed on request, so a test run leaves the tree as it was.
    target = DOCS if os.environ.get("LLMJP_README_SCREENSHOTS") == "1" else ARTIFACTS
    target.mkdir(exist_ok=True)
    _save_small_png(ARTIFACTS / "desktop-chat.png", target / "screenshot-desktop.png", 900)
    _save_small_png(ARTIFACTS / "phone-chat.png", target / "screenshot-phone.png", 390)
    for name in ("screenshot-desktop.png", "screenshot-phone.png"):
        assert (target / name).stat().st_size < 200_000
    page.close()
    context.close()
