"""The list of past conversations (a sidebar) and the arrows between versions: components, handlers, events.

The conversations live in the visitor's browser (``webapp.chat.history``), and
on the server too for a signed-in visitor who opted in (``webapp.chat.kept_server``,
``webapp.ui.history_server``); each handler here checks what the browser sent
and answers bad input with a message in Japanese and English, changing nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import gradio as gr

from inference import InvalidInput, Registry, SamplingOptions
from webapp.boundary import doors
from webapp.chat import history, versions
from webapp.chat.history import SAMPLING_KEYS, Saved
from webapp.chat.kept_server import Change, ServerKept
from webapp.chat.messages import Messages, plain, to_history
from webapp.chat.page import ChatPage
from webapp.errors import user_errors
from webapp.handlers import HISTORY_CHARS_PER_CONTEXT_TOKEN, sampling_values
from webapp.i18n import say, t
from webapp.text import require_encodable, visible
from webapp.ui import history_server

PICK = re.compile(r"(\d{1,5}):(-1|1)")

# Arrows beside each user message that has versions, drawn in the browser from the map the server writes
# into a hidden box; a click names the fork and the step, and presses the hidden button that asks the server.
_ARROW_NAMES = {lang: [say(lang, "version_prev"), say(lang, "version_next")] for lang in ("ja", "en")}
ARROWS_JS = """
() => {
  if (window.llmjpVersions) return;
  window.llmjpVersions = true;
  const NAMES = __NAMES__;
  const lang = () => (document.documentElement.lang.startsWith('ja') ? 'ja' : 'en');
  const draw = () => {
    const box = document.querySelector('#version-map textarea');
    const chat = document.querySelector('#chatbot');
    if (!box || !chat) return;
    let marks = [];
    try { marks = JSON.parse(box.value || '[]'); } catch (e) { marks = []; }
    const rows = [...chat.querySelectorAll('[data-testid="user"]')].map((u) => u.closest('.message-row') || u.parentElement);
    const want = new Map(marks.map((m) => [m.user, m]));
    chat.querySelectorAll('.version-arrows').forEach((nav) => {
      const m = want.get(Number(nav.dataset.user));
      const row = rows[Number(nav.dataset.user)];
      if (!m || nav.parentElement !== row || nav.dataset.sig !== `${m.index}:${m.shown}/${m.count}:${lang()}`) nav.remove();
    });
    for (const m of marks) {
      const row = rows[m.user];
      if (!row || row.querySelector(':scope > .version-arrows')) continue;
      const nav = document.createElement('div');
      nav.className = 'version-arrows';
      nav.dataset.user = String(m.user);
      nav.dataset.sig = `${m.index}:${m.shown}/${m.count}:${lang()}`;
      const said = NAMES[lang()];
      const button = (label, step, name) => {
        const b = document.createElement('button');
        b.type = 'button'; b.textContent = label; b.setAttribute('aria-label', name); b.title = name;
        const target = m.shown + step;
        b.disabled = target < 0 || target >= m.count;
        b.addEventListener('click', () => {
          window.llmjpVersionPick = `${m.index}:${step}`;
          document.querySelector('#version-go')?.click();
        });
        return b;
      };
      const where = document.createElement('span');
      where.className = 'version-where';
      where.textContent = `${m.shown + 1}/${m.count}`;
      nav.append(button('\\u2039', -1, said[0]), where, button('\\u203a', 1, said[1]));
      row.appendChild(nav);
    }
  };
  setInterval(draw, 250);
}
""".replace("__NAMES__", json.dumps(_ARROW_NAMES))

CSS = """
#chat-list .wrap { flex-direction: column !important; gap: 2px !important; }
#chat-list label { width: 100%; margin: 0 !important; padding: 4px 8px !important; font-size: var(--text-sm);
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; display: block !important; }
#chat-list input[type=radio] { display: none; }
#chat-list label.selected { background: var(--button-secondary-background-fill-hover) !important; font-weight: 600; }
.version-arrows { display: flex; justify-content: flex-end; align-items: center; gap: 6px; width: 100%;
  font-size: var(--text-sm); color: var(--body-text-color-subdued); padding: 2px 8px; }
/* Big enough for a finger (about 32 px and more on a touch screen), in the text's own colour. */
.version-arrows button { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 0;
  min-width: 32px; min-height: 32px; display: inline-flex; align-items: center; justify-content: center;
  font-size: 1.25em; line-height: 1; color: var(--body-text-color);
  background: var(--background-fill-secondary); cursor: pointer; }
@media (pointer: coarse) { .version-arrows button { min-width: 40px; min-height: 36px; } }
.version-arrows button:disabled { opacity: 0.35; cursor: default; }
.message-row.user-row { flex-wrap: wrap; }
"""


@dataclass
class HistoryView:
    store: gr.BrowserState
    open_id: gr.BrowserState
    search: gr.Textbox
    chats: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    delete_all: gr.Button
    confirm: gr.Group
    confirm_yes: gr.Button
    confirm_no: gr.Button
    version_map: gr.Textbox
    version_pick: gr.Textbox
    version_go: gr.Button
    pending: gr.State
    sidebar: gr.Sidebar
    server: gr.Checkbox
    account: gr.BrowserState


def render(secret: str) -> HistoryView:
    """The sidebar of past conversations (folded away on a phone), and the hidden parts of the arrows."""
    store = gr.BrowserState([], storage_key="llmjp-demo-chats", secret=secret)
    open_id = gr.BrowserState("", storage_key="llmjp-demo-open-chat", secret=secret)
    with gr.Sidebar(open=True, width=280, elem_id="history") as sidebar:
        gr.Markdown(t("history_heading"))
        search = gr.Textbox(
            label=t("history_search"),
            show_label=False,
            placeholder=t("history_search"),
            max_lines=1,
            elem_id="chat-search",
        )
        chats = gr.Radio(choices=[], label=t("history_heading"), show_label=False, elem_id="chat-list", container=False)
        with gr.Accordion(t("history_manage"), open=False, elem_id="chat-manage"):
            title = gr.Textbox(label=t("history_title"), max_lines=1, elem_id="chat-title")
            rename = gr.Button(t("history_rename"), size="sm", elem_id="chat-rename")
            delete = gr.Button(t("history_delete"), size="sm", variant="stop", elem_id="chat-delete")
            delete_all = gr.Button(t("history_delete_all"), size="sm", elem_id="chat-delete-all")
            with gr.Group(visible=False, elem_id="chat-delete-all-confirm") as confirm:
                gr.Markdown(t("history_delete_all_confirm"))
                with gr.Row():
                    confirm_yes = gr.Button(t("history_delete_all_yes"), size="sm", variant="stop")
                    confirm_no = gr.Button(t("withdraw_no"), size="sm")
        # Shown only to a signed-in visitor (webapp.ui.history_server); off unless the server holds their list.
        server = gr.Checkbox(
            False, label=t("history_server"), info=t("history_server_info"), visible=False, elem_id="history-server"
        )
        gr.Markdown(t("history_where"), elem_id="history-where")
    # Hidden, but named in the page's language like everything else (screen readers may still meet them).
    version_map = gr.Textbox("[]", label=t("versions"), visible="hidden", elem_id="version-map")
    version_pick = gr.Textbox("", label=t("versions"), visible="hidden", elem_id="version-pick")
    version_go = gr.Button(t("versions"), visible="hidden", elem_id="version-go")
    # The account whose server list this browser's list last mirrored ('' when none): a browser that first
    # meets an account keeping its list on the server adds its own conversations to it; afterwards the
    # server's list replaces the mirror, so what was deleted elsewhere does not come back.
    account = gr.BrowserState("", storage_key="llmjp-demo-chats-account", secret=secret)
    account.door_bound = doors.text(120)  # type: ignore[attr-defined]  # an identity is at most 100
    # Their own bounds at the door: the list's choices change per visitor (chat ids), and the kept list is
    # larger than the small values the door allows other kept state (its JSON escapes each character at most twice).
    chats.door_bound = doors.text(64)  # type: ignore[attr-defined]  # a chat id is 12 characters
    # Chats hold messages with their parts, and versions of them: deeper and wider than other kept values.
    store.door_bound = doors.json_value(  # type: ignore[attr-defined]
        2 * history.MAX_STORE_CHARS, depth=16, nodes=history.MAX_STORE_CHARS // 4
    )
    return HistoryView(
        store, open_id, search, chats, title, rename, delete, delete_all, confirm, confirm_yes, confirm_no,
        version_map, version_pick, version_go, gr.State(None), sidebar, server, account,
    )  # fmt: skip


def _refuse(lang: str | None, exc: InvalidInput) -> None:
    # Japanese first, then English, whatever the page's language: the input was not what this page sends.
    gr.Warning(f"{exc.ja}\n{exc.en}", title=say(lang, "notice_title"))


def _text(value: object, limit: int, what_ja: str, what_en: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInput(
            f"{what_ja}は {limit} 文字以内の文字列にしてください。",
            f"The {what_en} must be text of at most {limit} characters.",
        )
    return require_encodable(value, what_ja, what_en)


class Keeper:
    """The handlers of the list and the arrows. Nothing here writes to the server's database, except through
    ``server`` for a signed-in visitor who opted in."""

    def __init__(self, page: ChatPage, registry: Registry, server: ServerKept | None = None) -> None:
        self.page = page
        self.registry = registry
        self.server = server

    def _on_server(
        self, request: gr.Request | None, profile: gr.OAuthProfile | None, change: Change
    ) -> list[Saved] | None:
        """The same change made to the server's list, when the caller keeps one there; the list as it now is."""
        if self.server is None or (caller := self.server.account(request, profile)) is None:
            return None
        return self.server.change(caller, change)

    def _chats(self, store: object) -> list[Saved]:
        return history.check_store(store, self.registry)

    def _listing(self, chats: list[Saved], query: str, chosen: str | None) -> Any:
        choices = history.listing(chats, query)
        return gr.Radio(choices=choices, value=chosen if any(c[1] == chosen for c in choices) else None)

    def _messages(self, messages: object, model_id: str) -> Messages:
        spec = self.registry.specs.get(model_id) or self.registry.get(self.registry.default_id)
        return history.check_messages(messages, max_chars=spec.context * HISTORY_CHARS_PER_CONTEXT_TOKEN)

    # -- keeping -----------------------------------------------------------------

    def save(
        self, store: object, open_id: object, messages: object, replies: dict[str, Any], kept: dict[str, Any],
        model_id: str, temperature: float, top_p: float, top_k: int, repetition_penalty: float,
        max_new_tokens: int, seed: object, query: object, lang: str, request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Keep the conversation as it now is, first in the list; a new one gets its id here."""
        nothing = (gr.skip(),) * 4
        try:
            chats = self._chats(store)
            shown = self._messages(messages, model_id)
            query = _text(query, history.MAX_QUERY_CHARS, "検索語", "search")
            seed_text = _text(seed, 40, "seed", "seed")
        except InvalidInput as exc:
            _refuse(lang, exc)
            return nothing
        if not to_history(shown):
            return nothing
        chat_id = open_id if isinstance(open_id, str) and history.CHAT_ID.fullmatch(open_id) else history.new_id()
        old = next((c for c in chats if c.id == chat_id), None)
        sampling = sampling_values(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed_text)
        sampling["seed"] = seed_text
        chat = Saved(
            id=chat_id,
            title=old.title if old and old.renamed else history.title_of(shown),
            renamed=bool(old and old.renamed),
            updated=history.now(),
            model=model_id if model_id in self.registry.specs else self.registry.default_id,
            sampling=sampling,
            messages=plain(shown),
            replies=dict(replies or {}),
            versions=versions.settled(kept or {}),
        )
        chats, dropped = history.upsert(chats, chat)
        if len(json.dumps(history.dump(chats), ensure_ascii=False)) > history.MAX_STORE_CHARS:
            gr.Warning(say(lang, "history_too_big"), title=say(lang, "notice_title"))
            return nothing
        on_server = self._on_server(request, profile, lambda held: history.upsert(held, chat)[0])
        if on_server is not None:
            chats, dropped = on_server, 0  # the server's list, with what other devices kept
        if dropped:
            gr.Info(say(lang, "history_dropped").format(n=dropped), title=say(lang, "notice_title"))
        return history.dump(chats), chat_id, self._listing(chats, query, chat_id), chat.title

    def listed(self, store: object, query: object, open_id: object, lang: str) -> Any:
        """The list, searched: in titles and in every turn."""
        try:
            chats = self._chats(store)
            query = _text(query, history.MAX_QUERY_CHARS, "検索語", "search")
        except InvalidInput as exc:
            _refuse(lang, exc)
            return gr.skip()
        return self._listing(chats, query, open_id if isinstance(open_id, str) else None)

    def open(self, chat_id: object, store: object, model_now: str, lang: str, request: gr.Request) -> tuple[Any, ...]:
        """Open a kept conversation with its model, sampling, notes and versions."""
        nothing = (gr.skip(),) * 14
        if not chat_id:
            return nothing
        try:
            chats = self._chats(store)
            if not isinstance(chat_id, str) or not history.CHAT_ID.fullmatch(chat_id):
                raise history.BadStore()
        except InvalidInput as exc:
            _refuse(lang, exc)
            return nothing
        chat = next((c for c in chats if c.id == chat_id), None)
        if chat is None:
            return nothing
        if self.page.streams.running(request):
            gr.Info(say(lang, "busy"), title=say(lang, "notice_title"))
            return nothing
        model = chat.model if chat.model in self.registry.specs else model_now
        controls = self._controls(chat.sampling)
        # A new model resets the controls to its defaults (ChatPage.model_changed); the kept values follow
        # once that is done, from ``pending``.
        later = model != model_now
        return (
            chat.id,
            chat.messages,
            chat.replies,
            versions.showing(chat.versions, chat.messages),
            model,
            *((gr.skip(),) * 6 if later or controls is None else controls),
            controls if later else None,
            chat.title,
            json.dumps(versions.arrows(chat.messages, chat.versions)),
        )

    def restore(
        self, chat_id: object, store: object, model_now: str, lang: str, request: gr.Request
    ) -> tuple[Any, ...]:
        """On arrival: a reload reopens the chat that was open; anything else starts a new one."""
        if chat_id == "":
            return ("", *self.open("", store, model_now, lang, request)[1:])
        return self.open(chat_id, store, model_now, lang, request)

    def _controls(self, sampling: dict[str, Any]) -> tuple[Any, ...] | None:
        seed = sampling.get("seed")
        values = {k: sampling.get(k) for k in SAMPLING_KEYS}
        try:
            SamplingOptions.parse(**values)
        except InvalidInput:
            return None
        return (*values.values(), seed if isinstance(seed, str) else "")

    def apply_pending(self, pending: object) -> tuple[Any, ...]:
        """After a model change made by opening a conversation: its own sampling, not the model's defaults."""
        if not isinstance(pending, tuple | list) or len(pending) != 6:
            return (*(gr.skip(),) * 6, None)
        return (*pending, None)

    def new(self) -> tuple[Any, ...]:
        """A new conversation is not in the list until it has a reply."""
        return "", {}, gr.Radio(value=None), "", "[]"

    def rename(
        self, open_id: object, title: object, store: object, query: object, lang: str, request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Rename the open conversation."""
        try:
            chats = self._chats(store)
            name = " ".join(_text(title, history.MAX_TITLE_CHARS, "会話の名前", "conversation's name").split())
            query = _text(query, history.MAX_QUERY_CHARS, "検索語", "search")
            if not visible(name):
                raise InvalidInput("会話の名前を入力してください。", "Please type a name for the conversation.")
        except InvalidInput as exc:
            _refuse(lang, exc)
            return gr.skip(), gr.skip()
        chat = next((c for c in chats if c.id == open_id), None)
        if chat is None:
            gr.Info(say(lang, "history_none_open"), title=say(lang, "notice_title"))
            return gr.skip(), gr.skip()
        chat.title, chat.renamed = name, True

        def renamed(held: list[Saved]) -> list[Saved]:
            return [c.model_copy(update={"title": name, "renamed": True}) if c.id == chat.id else c for c in held]

        on_server = self._on_server(request, profile, renamed)
        chats = chats if on_server is None else on_server
        return history.dump(chats), self._listing(chats, query, chat.id)

    def delete(
        self, open_id: object, store: object, query: object, lang: str, request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Delete the open conversation from this browser (and the server); the chat starts afresh."""
        nothing = (gr.skip(),) * 8
        try:
            chats = self._chats(store)
            query = _text(query, history.MAX_QUERY_CHARS, "検索語", "search")
        except InvalidInput as exc:
            _refuse(lang, exc)
            return nothing
        if not any(c.id == open_id for c in chats):
            gr.Info(say(lang, "history_none_open"), title=say(lang, "notice_title"))
            return nothing
        on_server = self._on_server(request, profile, lambda held: [c for c in held if c.id != open_id])
        self.page.streams.cancel(request)
        kept = [c for c in (chats if on_server is None else on_server) if c.id != open_id]
        return history.dump(kept), "", [], {}, {}, self._listing(kept, query, None), "", "[]"

    def delete_all(self, lang: str, request: gr.Request, profile: gr.OAuthProfile | None) -> tuple[Any, ...]:
        """Delete every kept conversation from this browser (and from the server: the option stays on)."""
        self._on_server(request, profile, lambda held: [])
        self.page.streams.cancel(request)
        gr.Info(say(lang, "history_deleted_all"), title=say(lang, "notice_title"))
        return [], "", [], {}, {}, gr.Radio(choices=[], value=None), "", "[]", gr.Group(visible=False)

    # -- versions ----------------------------------------------------------------

    def fork(self, messages: object, kept: dict[str, Any], model_id: str, data: gr.EditData) -> Any:
        """Before an edit replaces a message and what follows: keep them as a version. A reply that does not
        come (refused, busy) leaves the conversation as it was, and ``settle`` takes the version back."""
        index = data.index if data is not None and isinstance(data.index, int) else None
        if index is None or not isinstance(messages, list) or not 0 <= index < len(messages):
            return gr.skip()
        # The browser has already put the edited text in (and dropped what followed): the version is the
        # conversation the server last showed, or the browser's with the message as it was.
        before = [*messages[:index], {**messages[index], "content": data.previous_value}, *messages[index + 1 :]]
        return self._fork(versions.last_shown(kept or {}) or before, kept, model_id, index)

    def fork_retry(self, messages: object, kept: dict[str, Any], model_id: str) -> Any:
        """Before a retry replaces the last reply: keep the message and its reply as a version."""
        return self._fork(versions.last_shown(kept or {}) or messages, kept, model_id, None)

    def _fork(self, messages: object, kept: dict[str, Any], model_id: str, index: int | None) -> Any:
        try:
            shown = self._messages(messages, model_id)
        except InvalidInput:
            return gr.skip()  # the reply's own checks tell the visitor
        index = versions.retried_at(shown) if index is None else index
        return versions.fork(shown, kept or {}, index) if index is not None else gr.skip()

    def settle(self, messages: object, kept: dict[str, Any]) -> tuple[Any, Any]:
        """After a reply or an undo: forks whose reply never came are taken back, and the arrows redrawn."""
        shown = messages if isinstance(messages, list) else []
        kept = versions.prune(shown, versions.settle(shown, kept or {}))
        return versions.showing(kept, shown), json.dumps(versions.arrows(shown, kept))

    def switch(
        self, choice: object, messages: object, kept: dict[str, Any], model_id: str, lang: str, request: gr.Request
    ) -> tuple[Any, ...]:
        """An arrow: show the version before or after, with the conversation below it."""
        nothing = (gr.skip(),) * 3
        try:
            shown = self._messages(messages, model_id)
            found = PICK.fullmatch(choice) if isinstance(choice, str) else None
            if found is None:
                raise InvalidInput("版の指定が正しくありません。", "The version asked for is not valid.")
        except InvalidInput as exc:
            _refuse(lang, exc)
            return nothing
        if self.page.streams.running(request):
            gr.Info(say(lang, "busy"), title=say(lang, "notice_title"))
            return nothing
        moved = versions.switch(shown, kept or {}, int(found[1]), int(found[2]))
        if moved is None:
            return nothing
        messages, kept = moved
        return messages, versions.showing(kept, messages), json.dumps(versions.arrows(messages, kept))


def wire(
    view: HistoryView,
    chat: Any,
    keeper: Keeper,
    *,
    demo: gr.Blocks,
    lang: gr.Component,
    model_event: Any,
    loaded: Any,
    sync: history_server.ServerSync | None = None,
) -> None:
    """The list's and the arrows' events; ``model_event`` is the chat's model change, to follow, and ``loaded``
    the page's first event, which opens the chat tab."""
    private: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
    controls = [*chat.sliders, chat.seed]
    listed = [view.store, view.open_id, view.chats, view.title]
    save = (
        user_errors(keeper.save),
        [view.store, view.open_id, chat.chatbot, chat.replies, chat.versions, chat.model, *controls, view.search, lang],
        listed,
    )
    settle = (user_errors(keeper.settle), [chat.chatbot, chat.versions], [chat.versions, view.version_map])
    # After every reply, undo and version switch: forks settled, then the conversation kept.
    for i, event in enumerate(chat.done):
        event.then(*settle, api_name=f"page_versions_settle_{i}", **private).then(
            *save, api_name=f"page_history_save_{i}", **private
        )
    # Before an edit or a retry replaces what follows, it becomes a version (inputs are read as the event starts).
    # Unqueued, so that it reads the conversation as the event starts rather than once the reply is done.
    fork_inputs = [chat.chatbot, chat.versions, chat.model]
    unqueued = {**private, "queue": False}
    chat.chatbot.edit(user_errors(keeper.fork), fork_inputs, chat.versions, api_name="page_versions_edit", **unqueued)
    chat.chatbot.retry(
        user_errors(keeper.fork_retry), fork_inputs, chat.versions, api_name="page_versions_retry", **unqueued
    )
    view.version_go.click(
        user_errors(keeper.switch),
        [view.version_pick, chat.chatbot, chat.versions, chat.model, lang],
        [chat.chatbot, chat.versions, view.version_map],
        js="(p, m, v, model, l) => [window.llmjpVersionPick || '', m, v, model, l]",
        api_name="page_versions_switch",
        **private,
    ).then(
        user_errors(chat.export_fn), chat.export_inputs, chat.export_links, api_name="page_versions_export", **private
    ).then(*save, api_name="page_history_save_switch", **private)
    demo.load(None, None, None, js=ARROWS_JS, **private)

    opened = [
        view.open_id, chat.chatbot, chat.replies, chat.versions, chat.model, *controls, view.pending, view.title,
        view.version_map,
    ]  # fmt: skip
    open_inputs = [view.store, chat.model, lang]
    # A reload reopens the conversation that was open, with its model and settings; a new tab or window
    # starts a new one (the list has the others). Once the chat tab is open, as Gradio mounts what an
    # unselected tab holds only when it is shown, with the values it was built with (a frame later: hence
    # the short wait).
    arrived = loaded.then(None, js="() => new Promise((done) => setTimeout(done, 150))", **private)
    if sync is not None:
        # A signed-in visitor's option, and their server list in place of this browser's, before a reopen.
        arrived = arrived.then(
            user_errors(sync.load),
            [view.store, view.account, lang],
            [view.server, view.store, view.account],
            api_name="page_history_server_load",
            **private,
        )
    arrived.then(
        user_errors(keeper.restore),
        [view.open_id, *open_inputs],
        opened,
        js=RELOAD_ONLY_JS,
        api_name="page_history_restore",
        **private,
    ).then(
        user_errors(keeper.listed),
        [view.store, view.search, view.open_id, lang],
        view.chats,
        api_name="page_history_list",
        **private,
    ).then(
        user_errors(chat.export_fn), chat.export_inputs, chat.export_links, api_name="page_history_export", **private
    )
    # A phone folds the list away; it opens from the sidebar's own button.
    demo.load(None, None, view.sidebar, js=FOLD_ON_PHONE_JS, **private)
    view.chats.input(
        user_errors(keeper.open), [view.chats, *open_inputs], opened, api_name="page_history_open", **private
    ).then(
        user_errors(chat.export_fn),
        chat.export_inputs,
        chat.export_links,
        api_name="page_history_open_export",
        **private,
    )
    model_event.then(
        keeper.apply_pending, view.pending, [*controls, view.pending], api_name="page_history_sampling", **private
    )
    if sync is not None:
        history_server.wire(
            view, sync, lang=lang, listed=(user_errors(keeper.listed), [view.store, view.search, view.open_id, lang],
                                           view.chats),
        )  # fmt: skip
    view.search.change(
        user_errors(keeper.listed),
        [view.store, view.search, view.open_id, lang],
        view.chats,
        api_name="page_history_search",
        **private,
    )
    cleared = [view.open_id, chat.versions, view.chats, view.title, view.version_map]
    chat.new_chat.click(keeper.new, None, cleared, api_name="page_history_new", **private)
    chat.chatbot.clear(keeper.new, None, cleared, api_name="page_history_clear", **private)
    view.rename.click(
        user_errors(keeper.rename),
        [view.open_id, view.title, view.store, view.search, lang],
        [view.store, view.chats],
        api_name="page_history_rename",
        **private,
    )
    gone = [
        view.store,
        view.open_id,
        chat.chatbot,
        chat.replies,
        chat.versions,
        view.chats,
        view.title,
        view.version_map,
    ]
    view.delete.click(
        user_errors(keeper.delete),
        [view.open_id, view.store, view.search, lang],
        gone,
        api_name="page_history_delete",
        **private,
    ).then(
        user_errors(chat.export_fn),
        chat.export_inputs,
        chat.export_links,
        api_name="page_history_delete_export",
        **private,
    )
    view.delete_all.click(None, None, view.confirm, js="() => ({visible: true, __type__: 'update'})", **private)
    view.confirm_no.click(None, None, view.confirm, js="() => ({visible: false, __type__: 'update'})", **private)
    view.confirm_yes.click(
        user_errors(keeper.delete_all), lang, [*gone, view.confirm], api_name="page_history_delete_all", **private
    ).then(
        user_errors(chat.export_fn),
        chat.export_inputs,
        chat.export_links,
        api_name="page_history_delete_all_export",
        **private,
    )


RELOAD_ONLY_JS = (
    "(id, store, model, lang) => "
    "[(performance.getEntriesByType('navigation')[0] || {}).type === 'reload' ? id : '', store, model, lang]"
)
FOLD_ON_PHONE_JS = "() => (window.innerWidth <= 640 ? {__type__: 'update', open: false} : {__type__: 'update'})"
