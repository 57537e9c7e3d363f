"""The Chat tab: its layout, and its events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from inference import Registry
from inference.sampling import bounds
from webapp.chat.availability import Availability
from webapp.chat.models_info import chat_defaults
from webapp.chat.page import ChatPage
from webapp.errors import user_errors
from webapp.handlers import licence_markdown
from webapp.i18n import say, t
from webapp.ui.conversation import Conversation

EXAMPLES = [
    "富士山について教えて",
    "日本の四季の特徴を、小学生にもわかるように説明してください。",
    "「吾輩は猫である」の冒頭を要約してください。",
    "大規模言語モデルとは何か、三行で説明してください。",
]


LATEX: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
]


# The rating comment opens beside the reply it is about. Gradio keeps the group where it was built (it
# shows and hides it there, so it is never moved); while it shows, it is drawn over the conversation just
# under the rated reply's buttons, and a spacer of its height there pushes the later messages down, so it
# covers none of them. It scrolls with the conversation, clipped to it; the message box stays where it is.
_PRESSED = {"Liked": "liked_button", "Disliked": "disliked_button"}
RATING_JS = """
() => {
  if (window.llmjpRatingBeside) return;
  window.llmjpRatingBeside = true;
  let buttons = null, slot = -1, spacer = null, shownFor = null, openedAt = 0, lastHeight = 0;
  const rows = () => [...document.querySelectorAll('#chatbot .message-buttons')];
  document.addEventListener('click', (e) => {
    const row = e.target instanceof Element ? e.target.closest('#chatbot .message-buttons') : null;
    if (row) { buttons = row; slot = rows().indexOf(row); }
  }, true);
  const place = () => {
    const group = document.querySelector('#rating-comment');
    const wrap = document.querySelector('#chatbot .bubble-wrap');
    if (buttons && !buttons.isConnected) buttons = rows()[slot] || null;
    if (!group || !wrap || !buttons) {
      // Its reply is gone (a new chat): the group is drawn where it was built, under the conversation.
      spacer?.remove(); spacer = null; shownFor = null;
      if (group?.classList.contains('rating-beside')) {
        group.classList.remove('rating-beside');
        group.style.removeProperty('top'); group.style.removeProperty('left');
        group.style.removeProperty('width'); group.style.removeProperty('clip-path');
      }
      return false;
    }
    if (!spacer) { spacer = document.createElement('div'); spacer.className = 'rating-spacer'; }
    if (buttons.nextElementSibling !== spacer) buttons.after(spacer);
    group.classList.add('rating-beside');
    const height = group.offsetHeight;
    spacer.style.height = `${height + 8}px`;
    if (height !== lastHeight) { lastHeight = height; openedAt = performance.now(); }  // still being drawn
    // What shows of the conversation: the pinned message box may cover its lower edge.
    const box = wrap.getBoundingClientRect(), composer = document.querySelector('#composer');
    const area = { top: Math.max(box.top, 0), bottom: Math.min(box.bottom, composer ? composer.getBoundingClientRect().top : innerHeight) };
    const at = spacer.getBoundingClientRect();
    if (shownFor !== group || buttons.dataset.rated !== '1') {
      shownFor = group; openedAt = performance.now();
      rows().forEach((r) => delete r.dataset.rated); buttons.dataset.rated = '1';
    }
    // Just opened (or moved to another reply): brought wholly into the conversation's view, the reply
    // above it as far as it fits; for a moment, as the chatbot may still scroll itself to its end.
    if (performance.now() - openedAt < 800) {
      if (at.bottom > area.bottom) wrap.scrollTop += at.bottom - area.bottom + 4;
      else if (at.top - height < area.top) wrap.scrollTop -= Math.min(area.top - (at.top - height), area.bottom - at.bottom);
    }
    const now = spacer.getBoundingClientRect();
    // Never over the rated reply's own buttons, whatever margins the chatbot's layout gives the row.
    const top = Math.max(now.top, buttons.getBoundingClientRect().bottom + 2);
    group.style.top = `${top}px`;
    group.style.left = `${now.left + 8}px`;
    group.style.width = `${now.width - 16}px`;
    const clipTop = Math.max(0, area.top - top), clipBottom = Math.max(0, top + height - area.bottom);
    group.style.clipPath = `inset(${clipTop}px 0 ${clipBottom}px 0)`;
    return true;
  };
  // Gradio names a pressed like or dislike in English only ("Liked", "Disliked").
  const said = __PRESSED__;
  const relabel = () => {
    const ja = document.documentElement.lang.startsWith('ja') ? 0 : 1;
    for (const b of document.querySelectorAll('#chatbot .message-buttons button[aria-label]')) {
      const name = b.getAttribute('aria-label');
      const key = Object.keys(said).find((k) => said[k].includes(name));
      if (key && name !== said[key][ja]) {
        b.setAttribute('aria-label', said[key][ja]);
        if (b.hasAttribute('title')) b.setAttribute('title', said[key][ja]);
      }
    }
  };
  // Every frame while the comment shows (it follows the conversation's scrolling), else now and then.
  let following = false;
  const follow = () => { following = place(); if (following) requestAnimationFrame(follow); };
  setInterval(() => { relabel(); if (!following) follow(); }, 150);
}
""".replace("__PRESSED__", json.dumps({word: [say("ja", key), say("en", key)] for word, key in _PRESSED.items()}))


@dataclass
class ChatView:
    model: gr.Dropdown
    licence: gr.Markdown
    acknowledge: gr.Button
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    new_chat: gr.Button
    sliders: list[Any]
    seed: gr.Textbox
    card_line: gr.Markdown
    export_links: gr.HTML
    feedback: gr.Group
    feedback_target: gr.Markdown
    feedback_comment: gr.Textbox
    feedback_share: gr.Checkbox
    feedback_send: gr.Button
    replies: gr.State
    pending_rating: gr.State
    versions: gr.State = field(default_factory=lambda: gr.State({}))
    """The versions behind the arrows (``webapp.chat.versions``)."""
    done: list[Any] = field(default_factory=list)
    """Events after which the conversation has changed (replies, undo): the list keeps it then."""
    export_fn: Any = None
    export_inputs: list[Any] = field(default_factory=list)


def _slider(name: str, label: Any, info: Any, value: float, step: float) -> gr.Slider:
    lo, hi = bounds(name)
    return gr.Slider(minimum=lo, maximum=hi, value=value, step=step, label=label, info=info, elem_id=f"slider-{name}")


def render(registry: Registry, availability: Availability | None = None) -> ChatView:
    """The chat tab's components. Model first, so a phone shows it above the conversation."""
    default = registry.get(registry.default_id)
    s = chat_defaults(default)
    specs = list(registry.specs.values())
    choices = availability.choices(specs) if availability else [(spec.label, spec.id) for spec in specs]
    unavailable = availability.note(default, "ja") if availability else ""
    with gr.Row(equal_height=True, elem_id="model-row"):
        model = gr.Dropdown(
            choices=choices,
            value=default.id,
            label=t("model"),
            scale=2,
            min_width=200,
            elem_id="model-picker",
        )
        licence = gr.Markdown(
            "\n\n".join(filter(None, [licence_markdown(default, "ja"), unavailable])), elem_id="model-licence"
        )
    acknowledge = gr.Button(t("acknowledge"), visible=False, size="sm")
    chatbot = Conversation(
        label=t("conversation"),
        height=480,
        buttons=["copy"],
        editable="user",
        # Gradio translates I18nData in any text, though the placeholder is typed str.
        placeholder=t("chat_placeholder"),  # type: ignore[arg-type]
        examples=[{"text": e} for e in EXAMPLES],
        # $…$ inline and $$…$$ displayed, as researchers write maths; \(…\) and \[…\] as LaTeX does.
        latex_delimiters=LATEX,
        elem_id="chatbot",
    )
    # The rating comment: moved beside the rated reply as it opens (RATING_JS).
    with gr.Group(visible=False, elem_id="rating-comment") as feedback_group:
        target = gr.Markdown("")
        comment = gr.Textbox(label=t("feedback_comment"), lines=2, max_lines=6)
        share = gr.Checkbox(label=t("feedback_share"), value=False)
        feedback_send = gr.Button(t("feedback_send"), size="sm")
    # The message box and its buttons stay pinned at the bottom of the window (ui.CSS).
    with gr.Column(elem_id="composer"):
        message = gr.Textbox(
            label=t("message"),
            show_label=False,
            placeholder=t("message_placeholder"),
            lines=1,
            max_lines=8,
            elem_id="chat-message",
        )
        with gr.Row(elem_classes=["chat-buttons"]):
            send = gr.Button(t("send"), variant="primary", min_width=0, elem_id="send")
            # Which of the two shows is decided in the browser, from the conversation (see ui.CSS).
            stop = gr.Button(t("stop"), variant="stop", min_width=0, elem_id="stop")
            new_chat = gr.Button(t("new_chat"), min_width=0, elem_id="new-chat")
    with gr.Accordion(t("sampling"), open=False, elem_id="sampling"):
        sliders = [
            _slider("temperature", t("temperature"), t("temperature_info"), s.temperature, 0.05),
            _slider("top_p", "top_p", t("top_p_info"), s.top_p, 0.01),
            _slider("top_k", t("top_k"), t("top_k_info"), s.top_k, 1),
            _slider(
                "repetition_penalty", "repetition_penalty", t("repetition_penalty_info"), s.repetition_penalty, 0.01
            ),
            _slider("max_new_tokens", "max_new_tokens", t("max_new_tokens_info"), s.max_new_tokens, 1),
        ]
        card_line = gr.Markdown(f"{say('ja', 'card_value')}: max_new_tokens = {default.sampling.max_new_tokens}")
        # A text box, so that empty means "no seed" (a number box shows 0).
        seed = gr.Textbox(label=t("seed"), info=t("seed_info"), value="", max_lines=1, elem_id="seed")
    with gr.Accordion(t("export"), open=False, elem_id="export"):
        export_links = gr.HTML(f"<p>{say('ja', 'nothing_to_export')}</p>", elem_id="export-links")
    return ChatView(
        model, licence, acknowledge, chatbot, message, send, stop, new_chat, sliders, seed, card_line,
        export_links, feedback_group, target, comment, share, feedback_send,
        gr.State({}), gr.State(None),
    )  # fmt: skip


def wire(chat: ChatView, page: ChatPage, *, lang: gr.Radio, receipt: gr.Component) -> Any:
    """The chat's events; returns the model change event, for the page to chain its state onto."""
    private: dict[str, Any] = {"api_visibility": "private"}
    tail = [chat.model, *chat.sliders, chat.seed, chat.replies, lang, receipt]
    # Send and Stop are no outputs: they follow the pending note in the conversation (ui.CSS), so no
    # order in which two replies' updates arrive can leave a running reply without its Stop button.
    outputs = [chat.chatbot, chat.message, chat.replies]
    # Fairness, the queue's bound and the "busy" message belong to the model
    # lanes (inference.lanes): Gradio lets every reply in at once and they
    # wait there, their position shown in the pending reply.
    streaming: dict[str, Any] = {"concurrency_limit": None, "show_progress": "hidden", **private}
    # Every way into a reply reads the same inputs (the box, the conversation, the settings).
    inputs = [chat.message, chat.chatbot, *tail]
    replies = [
        gr.on(
            [chat.send.click, chat.message.submit],
            user_errors(page.send),
            inputs,
            outputs,
            api_name="page_chat",
            **streaming,
        ),
        chat.chatbot.retry(user_errors(page.retry), inputs, outputs, api_name="page_retry", **streaming),
        chat.chatbot.edit(user_errors(page.edit), inputs, outputs, api_name="page_edit", **streaming),
        chat.chatbot.option_select(user_errors(page.option), inputs, outputs, api_name="page_continue", **streaming),
        chat.chatbot.example_select(user_errors(page.example), inputs, outputs, api_name="page_example", **streaming),
    ]
    # The export holds the conversation as it now is, in the page's language.
    chat.export_fn, chat.export_inputs = page.export, [chat.chatbot, chat.replies, lang, chat.versions]
    export = (user_errors(page.export), chat.export_inputs, chat.export_links)
    for i, event in enumerate(replies):
        chat.done.append(event.then(*export, api_name=f"page_reply_done_{i}", **private))
    # Stop never waits in the queue behind other events: it only sets this visitor's stop flag.
    # "multiple": a click's event may still be on its way back when the visitor stops the next reply,
    # and a button's default ("once") ignores clicks while its last event is pending.
    # The conversation as shown names the reply the Stop was pressed for (its pending note's id).
    chat.stop.click(
        page.stop, chat.chatbot, None, api_name="page_stop", concurrency_limit=None, trigger_mode="multiple", **private
    )
    undone = chat.chatbot.undo(
        user_errors(page.undo), chat.chatbot, [chat.chatbot, chat.message], api_name="page_undo", **private
    ).then(*export, api_name="page_undo_done", **private)
    chat.done.append(undone)
    cleared = [chat.chatbot, chat.message, chat.replies, chat.pending_rating]
    for trigger, name in ((chat.new_chat.click, "page_new_chat"), (chat.chatbot.clear, "page_clear")):
        trigger(user_errors(page.new_chat), None, cleared, api_name=name, **private).then(
            *export, api_name=f"{name}_done", **private
        )
    lang.change(*export, api_name="page_lang_export", **private)
    chat.chatbot.like(
        user_errors(page.rate),
        [chat.chatbot, chat.replies, lang, receipt],
        [chat.pending_rating, chat.feedback, chat.feedback_target],
        api_name="page_rate",
        **private,
    )
    chat.feedback_send.click(
        user_errors(page.annotate),
        [chat.pending_rating, chat.feedback_comment, chat.feedback_share, chat.chatbot, chat.replies, lang, receipt],
        [chat.pending_rating, chat.feedback, chat.feedback_comment, chat.feedback_share],
        api_name="page_rate_comment",
        **private,
    )
    model_outputs = [*chat.sliders, chat.card_line, chat.licence]
    lang.change(
        user_errors(page.model_texts),
        [chat.model, lang],
        [chat.card_line, chat.licence],
        api_name="page_lang",
        **private,
    )
    return chat.model.change(
        user_errors(page.model_changed), [chat.model, lang], model_outputs, api_name="page_model", **private
    )
