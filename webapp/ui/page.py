"""The page: Terms, Chat and (for administrators) Admin tabs. Layout in small builders, events in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import gradio as gr
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware import Middleware

from inference import Registry
from webapp.admin.audit import EVENT_COLUMNS, Admin
from webapp.admin.ratings import Ratings
from webapp.boundary.guard import Guard
from webapp.chat.kept_server import ServerKept
from webapp.chat.page import ChatPage
from webapp.errors import user_errors
from webapp.gate import privacy
from webapp.gate.terms import Terms
from webapp.handlers import Handlers
from webapp.i18n import HEAD, I18N, say, t
from webapp.settings import Settings
from webapp.ui import chat as ui_chat
from webapp.ui import compare
from webapp.ui import history as ui_history
from webapp.ui import terms as ui_terms
from webapp.ui.history_server import ServerSync

TITLE = "LLM-jp チャット / LLM-jp Chat"

CSS = """
.terms-text { white-space: pre-wrap; font-size: 0.92em; line-height: 1.6; max-height: 28em; overflow-y: auto;
  padding: 0.8em; border: 1px solid var(--border-color-primary); border-radius: 6px; }
.terms-hash, .terms-hash code, #model-licence { overflow-wrap: anywhere; word-break: break-all; }
.field-error .info { color: var(--error-text-color) !important; font-weight: 600; }
.field-error input, .field-error textarea { border-color: var(--error-border-color) !important; }
.chat-buttons { flex-wrap: nowrap !important; gap: 0.5em; }
/* Send becomes Stop exactly while the conversation shows a pending reply (Gradio draws a spinner in its
   note). Set by the reply's own updates instead, the buttons went wrong when two replies' updates
   overlapped: Gradio's client applies a generator's diffs in place, so an update still waiting to be
   drawn can be emptied by the next one, and a reply could start with Send shown and no Stop. */
body:has(#chatbot .loading-spinner) #send, body:not(:has(#chatbot .loading-spinner)) #stop {
  display: none !important; }
.chat-buttons > * { flex: 1 1 0 !important; min-width: 0 !important; }
#page-header { align-items: center; flex-wrap: nowrap !important; }
#page-header h1 { margin: 0; white-space: nowrap; }
/* The language switch: two small segments, not a box that wraps the title on a phone. */
#language { flex-grow: 0 !important; padding: 0 !important; border: none !important;
  background: none !important; }
#language .wrap { flex-wrap: nowrap !important; gap: 0 !important; }
#language label { padding: 2px 10px !important; margin: 0 !important; font-size: var(--text-sm);
  border-radius: 0 !important; box-shadow: none !important; white-space: nowrap; }
#language label:first-child { border-radius: 6px 0 0 6px !important; }
#language label:last-child { border-radius: 0 6px 6px 0 !important; }
#language input[type=radio] { display: none; }
#language label.selected { background: var(--button-primary-background-fill) !important;
  color: var(--button-primary-text-color) !important; }
#model-licence { font-size: var(--text-sm); }
/* What chatting needs stays in reach: the conversation fills the window down to the message box,
   which stays pinned at its bottom while the conversation scrolls. */
#chatbot { height: clamp(200px, calc(100dvh - 330px), 1000px) !important; }
/* Gradio's container hides its overflow, which makes it the scroller that "sticky" sticks to; clip
   still cuts what overflows sideways, without being a scroller. */
.gradio-container { overflow: clip !important; }
#composer { position: sticky; bottom: 0; z-index: 30; gap: 6px; padding: 6px 0;
  background: var(--body-background-fill); box-shadow: 0 -8px 10px -10px rgba(0, 0, 0, 0.35); }
/* The rating comment, drawn beside the rated reply over the conversation (ui.chat.RATING_JS). */
#rating-comment.rating-beside { position: fixed; z-index: 29; margin: 0 !important; overflow: hidden;
  border: 1px solid var(--border-color-primary); border-radius: 8px;
  background: var(--block-background-fill); box-shadow: 0 4px 14px rgba(0, 0, 0, 0.2); }
#rating-comment.rating-beside .prose { padding: 4px 12px; }
/* The chatbot's scroll-to-end arrow would sit over the comment's button. */
body:has(#rating-comment.rating-beside) #chatbot .scroll-down-button-container { display: none; }
/* A reply's note is one quiet line (model · tokens · speed); opening it shows the details. */
#chatbot .title .md { min-width: 0; overflow: hidden; }
#chatbot .title .md p { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; margin: 0; }
.prompt-view summary { cursor: pointer; font-weight: 600; }
.prompt-view pre { max-height: 24em; overflow: auto; white-space: pre-wrap; }
/* Gradio titles its toasts with the English type name; say it in Japanese on a Japanese page. */
html[lang^="ja"] .toast-title { font-size: 0 !important; }
html[lang^="ja"] .toast-title::before { font-size: var(--text-md); }
html[lang^="ja"] .toast-title.warning::before { content: "ご確認ください"; }
html[lang^="ja"] .toast-title.info::before { content: "お知らせ"; }
html[lang^="ja"] .toast-title.error::before { content: "エラー"; }
html[lang^="ja"] .toast-title.success::before { content: "完了"; }
@media (max-width: 640px) {
  #page-header h1 { font-size: 1.3em; }
  #chatbot { height: clamp(200px, calc(100dvh - 360px), 1000px) !important; }
  #chatbot .title { font-size: 0.78em; }
  #chatbot .title .duration { display: none; }
  #model-licence { font-size: 0.8em; }
  #model-row { flex-direction: column !important; }
  #language .wrap { flex-direction: row !important; }
  .tab-container button, [role="tab"] { padding-left: 0.6em; padding-right: 0.6em; }
}
"""
FONTS = ["Noto Sans CJK JP", "Noto Sans JP", "Hiragino Sans", "Yu Gothic", "Meiryo", "system-ui", "sans-serif"]


CSS += ui_history.CSS + compare.CSS


def launch_options(settings: Settings | None = None) -> dict[str, Any]:
    """Arguments for ``demo.launch``: the look and language of the page, and the limits of the web server."""
    # Local fonts only: the page must not wait on a font service, and Japanese
    # must render with a CJK face rather than boxes.
    options: dict[str, Any] = {
        "theme": gr.themes.Default(font=FONTS, font_mono=["Noto Sans Mono CJK JP", "monospace"]),
        "css": CSS,
        "head": HEAD,
        "i18n": I18N,
    }
    if settings is not None:
        # The app reads X-Forwarded-For itself, trusting exactly the configured
        # proxies (webapp.gate.identity.client_address); uvicorn must not rewrite the
        # peer address from it first, which it does for local peers by default.
        os.environ["FORWARDED_ALLOW_IPS"] = ""
        allowed = frozenset(o.strip() for o in settings.allowed_origins.split(",") if o.strip())
        options |= {
            # Gradio's traffic dashboard: an unauthenticated /monitoring/summary of every event's timings,
            # bought with a pandas summary of up to 10,000 past events after each event (see trim_overheads).
            "enable_monitoring": False,
            "max_file_size": settings.max_file_size,
            # Gradio keeps each session's page state in memory: bounded in number, the oldest dropped.
            "state_session_capacity": settings.max_sessions,
            "app_kwargs": {
                "middleware": [Middleware(Guard, same_origin=settings.oauth or bool(allowed), allowed=allowed)]
            },
        }
    return options


@dataclass
class _AdminView:
    token_box: gr.Textbox
    sign_in: gr.Button
    plot: gr.BarPlot
    events: gr.Dataframe
    download: gr.HTML
    ratings: gr.Dataframe
    ratings_download: gr.HTML
    refresh: gr.Button
    arena: gr.Dataframe | None = None
    arena_download: gr.HTML | None = None


def _render_admin() -> _AdminView:
    gr.Markdown(t("audit_log"))
    refresh = gr.Button(t("refresh"), size="sm")
    # Gradio translates I18nData in any text, though the plot's title is typed str.
    plot = gr.BarPlot(x="day", y="acceptances", y_lim=[0, None], sort="x", title=t("per_day"))  # type: ignore[arg-type]
    events = gr.Dataframe(headers=EVENT_COLUMNS, datatype="str", label=t("latest_events"), wrap=True)
    gr.Markdown(t("access_report"))
    download = gr.HTML("")
    ratings = gr.Dataframe(headers=["model_id", "up", "down"], label=t("feedback_counts"))
    gr.Markdown(t("feedback_export"))
    ratings_download = gr.HTML("")
    arena = gr.Dataframe(headers=compare.RANK_COLUMNS, label=t("arena_ranking"), elem_id="arena-ranking")
    arena_download = gr.HTML("", elem_id="arena-download")
    return _AdminView(
        gr.Textbox(render=False), gr.Button(render=False), plot, events, download, ratings, ratings_download, refresh,
        arena, arena_download,
    )  # fmt: skip


def build(
    *,
    handlers: Handlers,
    admin: Admin,
    terms: Terms,
    registry: Registry,
    oauth: bool,
    secret: str,
    sessions: sessionmaker[Session],
) -> gr.Blocks:
    """The whole app: layout, then every event in one place."""
    private: dict[str, Any] = {"api_visibility": "private"}
    chat_page, terms_page, ratings = (
        ChatPage(handlers, sessions),
        ui_terms.TermsPage(handlers),
        Ratings(sessions, admin),
    )
    board = compare.ArenaBoard(sessions, admin)
    with gr.Blocks(title=TITLE) as demo:
        # The receipt and the admin grant live in the browser (encrypted with the
        # server secret) and come with each request: nothing server-side is
        # keyed by the session hash alone.
        receipt = gr.BrowserState(None, storage_key="llmjp-demo-receipt", secret=secret)
        admin_grant = gr.BrowserState("", storage_key="llmjp-demo-admin", secret=secret)
        with gr.Row(elem_id="page-header"):
            gr.Markdown(t("heading"))
            lang = gr.Radio(
                [("日本語", "ja"), ("English", "en")],
                value="ja",
                label=t("language"),
                show_label=False,
                elem_id="language",
                scale=0,
                min_width=130,
            )
            if oauth:
                gr.LoginButton("Hugging Face でサインイン / Sign in with Hugging Face", size="sm", scale=0)
        with gr.Tabs(selected="terms") as tabs:
            with gr.Tab(t("terms_tab"), id="terms"):
                form = ui_terms.render(terms, lambda: privacy.render(handlers.gate.retention_days, label=t("privacy")))
                with gr.Accordion(t("admins"), open=False):
                    token_box = gr.Textbox(label=t("admin_token"), type="password", max_lines=1)
                    sign_in = gr.Button(t("admin_open"), size="sm")
            with gr.Tab(t("chat_locked"), id="chat", interactive=False) as chat_tab:
                chat = ui_chat.render(registry, handlers.availability)
                kept = ui_history.render(secret)
                duel = compare.render(registry, handlers.availability)
            with gr.Tab(t("admin_tab"), id="admin", visible=False) as admin_tab:
                view = _render_admin()
        view.token_box, view.sign_in = token_box, sign_in

        def page_state(
            model_id: str,
            receipt_value: str | None,
            token: str,
            language: str,
            request: gr.Request,
            profile: gr.OAuthProfile | None,
        ) -> dict[Any, Any]:
            """Lock or unlock the chat, and show what this caller may do, from the server's record."""
            caller = handlers.caller(request, profile, receipt_value)
            accepted = handlers.gate.has_consent(caller)
            note, fill = terms_page.returning(receipt_value, language, request, profile)
            return {
                form.accepted_note: note,
                form.fill: fill,
                tabs: gr.Tabs(selected="chat" if accepted else "terms"),
                chat_tab: gr.Tab(interactive=accepted, label=t("chat_open" if accepted else "chat_locked")),
                form.withdraw: gr.Button(t("withdraw"), visible=accepted),
                chat.acknowledge: gr.Button(
                    t("acknowledge"),
                    visible=accepted and handlers.needs_acknowledgement(model_id, receipt_value, request, profile),
                ),
                admin_tab: gr.Tab(t("admin_tab"), visible=admin.is_admin(profile, token)),
            }

        state_outputs = [tabs, chat_tab, form.withdraw, chat.acknowledge, admin_tab, form.accepted_note, form.fill]
        state_inputs = [chat.model, receipt, admin_grant, lang]
        # The page's language comes from the browser (or the visitor's saved choice).
        demo.load(None, None, lang, js="() => (window.llmjpInit ? window.llmjpInit() : 'ja')", **private)
        lang.input(None, lang, lang, js="(l) => window.llmjpSetLang(l)", **private)
        # Cheap events each have their own group and run several at once, so none waits behind a flood
        # of another kind (Gradio otherwise runs each event one at a time); how much one address may
        # send, and how long each group's line may grow, is bounded at the door (webapp.boundary.doors).
        state_group: dict[str, Any] = {"concurrency_id": "page_state", "concurrency_limit": 8, **private}
        terms_group: dict[str, Any] = {"concurrency_id": "terms", "concurrency_limit": 8, **private}
        withdraw_group: dict[str, Any] = {"concurrency_id": "withdraw", "concurrency_limit": 8}
        lang.change(
            user_errors(terms_page.returning),
            [receipt, lang],
            [form.accepted_note, form.fill],
            api_name="page_terms_note",
            **state_group,
        )
        loaded = demo.load(user_errors(page_state), state_inputs, state_outputs, api_name="page_load", **state_group)
        # Gradio mounts what sits in an unselected tab or a closed accordion only when it is first shown,
        # and a frame later sends it the values it was built with once more: what was typed into a box in
        # that frame was lost (the message box as the chat opens, the seed as its panel opens). A box
        # shown by an update is no longer mounted that way, so every box a visitor types into is shown
        # once at load, in the browser.
        typed = [chat.model, chat.message, *chat.sliders, chat.seed, chat.feedback_comment, chat.feedback_share]
        typed.append(token_box)
        shown = "{__type__: 'update', visible: true}"
        demo.load(None, None, typed, js=f"() => Array({len(typed)}).fill({shown})", **private)

        # Terms: the page's form shows its errors beside the fields; /accept_terms is the API.
        form.accept.click(
            user_errors(terms_page.accept),
            [*form.fields, receipt, lang],
            [*form.fields, form.status, receipt],
            api_name="page_accept",
            **terms_group,
        ).then(user_errors(page_state), state_inputs, state_outputs, api_name="page_unlock", **state_group).then(
            # The chat opens at its top (the model, the conversation and the box), not where the form was.
            None,
            js="() => { if (document.querySelector('#chatbot')?.checkVisibility()) window.scrollTo(0, 0); }",
            **private,
        )
        # Showing and hiding the confirmation runs in the browser alone.
        form.withdraw.click(None, None, form.confirm, js="() => ({visible: true, __type__: 'update'})", **private)
        form.confirm_no.click(None, None, form.confirm, js="() => ({visible: false, __type__: 'update'})", **private)
        form.confirm_yes.click(
            user_errors(terms_page.withdraw),
            [receipt, lang],
            [form.status, form.confirm, *form.fields],
            api_name="page_withdraw",
            **withdraw_group,
            **private,
        ).then(user_errors(page_state), state_inputs, state_outputs, api_name="page_lock", **state_group)
        # Recording is a short database write: let several run at once (appends
        # still serialise on the log's head row) rather than one at a time.
        gr.api(user_errors(handlers.accept_terms), api_name="accept_terms", concurrency_limit=8)
        gr.api(user_errors(handlers.withdraw_consent), api_name="withdraw_consent", **withdraw_group)
        gr.api(user_errors(handlers.acknowledge_licence), api_name="acknowledge_licence")

        # Chat: the page streams into the chatbot; /chat streams text. Both go
        # through the same gate before any token is made, and the same lanes.
        model_event = ui_chat.wire(chat, chat_page, lang=lang, receipt=receipt)
        demo.load(None, None, None, js=ui_chat.RATING_JS, **private)
        model_event.then(
            user_errors(page_state), state_inputs, state_outputs, api_name="page_model_state", **state_group
        )
        # Past conversations and versions: kept in the visitor's browser, and on the server only for a
        # signed-in visitor who opts in.
        server_kept = ServerKept(handlers, sessions, registry)
        keeper = ui_history.Keeper(chat_page, registry, server_kept)
        ui_history.wire(
            kept, chat, keeper, demo=demo, lang=lang, model_event=model_event, loaded=loaded,
            sync=ServerSync(server_kept, registry),
        )  # fmt: skip
        # Compare: two replies through the same gate and limits as /chat.
        compare.wire(duel, compare.Compare(handlers, sessions), chat=chat, lang=lang, receipt=receipt)

        def acknowledge(
            model_id: str,
            receipt_value: str | None,
            lang_value: str,
            request: gr.Request,
            profile: gr.OAuthProfile | None,
        ) -> None:
            """The page's acknowledgement: the confirmation comes as a notice in the page's language."""
            handlers.acknowledge_licence(model_id, receipt_value, request, profile)
            licence = handlers.inference.registry.get(model_id).license.name
            gr.Info(
                say(lang_value, "licence_acknowledged").format(licence=licence), title=say(lang_value, "notice_title")
            )

        chat.acknowledge.click(
            user_errors(acknowledge), [chat.model, receipt, lang], None, api_name="page_ack", **private
        ).success(
            lambda: gr.Button(t("acknowledge"), visible=False),
            None,
            chat.acknowledge,
            api_name="page_ack_done",
            **private,
        )
        chat_api = user_errors(handlers.chat_api)
        # The API's description lists the offered models rather than "any string".
        chat_api.__annotations__ = {**chat_api.__annotations__, "model_id": Literal[tuple(registry.ids())]}
        gr.api(chat_api, api_name="chat", concurrency_limit=None)
        gr.api(user_errors(handlers.models), api_name="models")

        # Admin: every handler checks the caller on the server.
        dashboard = [view.plot, view.events, view.download]
        rated = [view.ratings, view.ratings_download]
        view.sign_in.click(
            user_errors(admin.sign_in),
            view.token_box,
            [admin_grant, admin_tab],
            api_name="page_admin_sign_in",
            **private,
        ).success(user_errors(admin.dashboard), admin_grant, dashboard, api_name="page_admin_open", **private)
        for trigger, name in ((view.refresh.click, "page_admin_refresh"), (admin_tab.select, "page_admin_select")):
            trigger(user_errors(admin.dashboard), admin_grant, dashboard, api_name=name, **private).then(
                user_errors(ratings.dashboard), admin_grant, rated, api_name=f"{name}_ratings", **private
            ).then(
                user_errors(board.dashboard),
                admin_grant,
                [view.arena, view.arena_download],
                api_name=f"{name}_arena",
                **private,
            )
        gr.api(user_errors(admin.admin_events), api_name="admin_events")
        gr.api(user_errors(admin.admin_export), api_name="admin_export")
        gr.api(user_errors(admin.admin_erase), api_name="admin_erase")
        gr.api(user_errors(ratings.admin_feedback), api_name="admin_feedback")
        gr.api(user_errors(board.admin_arena), api_name="admin_arena")
    progress_on_components_only(demo)
    return demo


def progress_on_components_only(demo: gr.Blocks) -> None:
    """Gradio's progress shown on an event's output components, never on its layouts, and nowhere when hidden.

    The browser keeps a loading status for every output an event has ever had, and at each status
    message of any event (each streamed update of a reply among them) it copies the value and props of
    each of those components, and of everything inside them. Events that switch tabs or show a form
    list the tabs and columns among their outputs: every streamed update then copied the whole page
    (the conversation, the terms, every model's entry), most of the browser's work while a reply
    streams, and more the longer the conversation. A layout shows no progress of its own, and an event
    with hidden progress shows none at all, so neither needs a status.
    """
    for fn in demo.fns.values():
        if fn.show_progress == "hidden":
            fn.show_progress_on = []
        elif fn.show_progress_on is None:
            fn.show_progress_on = [block for block in fn.outputs if not isinstance(block, gr.blocks.BlockContext)]
