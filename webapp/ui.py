"""The page: Terms, Chat and (for administrators) Admin tabs. Layout in small builders, events in one place."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from inference import Registry, SamplingOptions
from inference.sampling import bounds
from webapp import privacy
from webapp.admin import EVENT_COLUMNS, Admin
from webapp.errors import user_errors
from webapp.guard import Guard
from webapp.handlers import Handlers, licence_markdown
from webapp.settings import Settings
from webapp.terms import Terms

TITLE = "LLM-jp チャット / LLM-jp Chat"
CHAT_LOCKED = "チャット(規約への同意が必要) / Chat (accept the terms first)"
CHAT_OPEN = "チャット / Chat"
ACKNOWLEDGE = "非営利目的でのみ利用することを確認します / I will use this model for non-commercial purposes only"

CSS = """
.terms-text { white-space: pre-wrap; font-size: 0.92em; line-height: 1.6; max-height: 28em; overflow-y: auto;
  padding: 0.8em; border: 1px solid var(--border-color-primary); border-radius: 6px; }
"""
FONTS = ["Noto Sans CJK JP", "Noto Sans JP", "Hiragino Sans", "Yu Gothic", "Meiryo", "system-ui", "sans-serif"]


def launch_options(settings: Settings | None = None) -> dict[str, Any]:
    """Arguments for ``demo.launch``: the look of the page, and the limits of the web server."""
    # Local fonts only: the page must not wait on a font service, and Japanese
    # must render with a CJK face rather than boxes.
    options: dict[str, Any] = {
        "theme": gr.themes.Default(font=FONTS, font_mono=["Noto Sans Mono CJK JP", "monospace"]),
        "css": CSS,
    }
    if settings is not None:
        # The app reads X-Forwarded-For itself, trusting exactly the configured
        # proxies (webapp.identity.client_address); uvicorn must not rewrite the
        # peer address from it first, which it does for local peers by default.
        os.environ["FORWARDED_ALLOW_IPS"] = ""
        allowed = frozenset(o.strip() for o in settings.allowed_origins.split(",") if o.strip())
        options |= {
            "max_file_size": settings.max_file_size,
            "app_kwargs": {
                "middleware": [Middleware(Guard, same_origin=settings.oauth or bool(allowed), allowed=allowed)]
            },
        }
    return options


@dataclass
class _TermsForm:
    fields: list[Any]
    accept: gr.Button
    withdraw: gr.Button
    status: gr.Markdown


@dataclass
class _Chat:
    model: gr.Dropdown
    licence: gr.Markdown
    acknowledge: gr.Button
    sliders: list[Any]
    chatbot: gr.Chatbot
    status: gr.Markdown
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button


@dataclass
class _Page:
    """Every component an event reads or updates."""

    receipt: gr.BrowserState
    admin_grant: gr.BrowserState
    tabs: gr.Tabs
    chat_tab: gr.Tab
    admin_tab: gr.Tab
    form: _TermsForm
    chat: _Chat
    admin: _AdminView


@dataclass
class _AdminView:
    token_box: gr.Textbox
    sign_in: gr.Button
    plot: gr.BarPlot
    events: gr.Dataframe
    download: gr.HTML
    refresh: gr.Button


def _render_terms(terms: Terms) -> _TermsForm:
    gr.Markdown(
        "## 利用規約 / Terms of use\n"
        "チャットを使う前に、国立情報学研究所の「LLM-jp-3 172B beta1」利用規約を読み、同意してください。"
        " 日本語版が正文です。英語版は参考訳であり、法的効力を持ちません。\n\n"
        'Before chatting, read and accept the NII "LLM-jp-3 172B beta1" terms of use. The Japanese text is'
        " authoritative; the English translation is for reference only and has no legal effect."
    )
    with gr.Tabs():
        with gr.Tab("日本語(正文)", id="terms-ja"):
            gr.HTML(f'<div class="terms-text" lang="ja">{html.escape(terms.ja)}</div>')
        with gr.Tab("English (reference only, no legal effect)", id="terms-en"):
            gr.HTML(f'<div class="terms-text" lang="en">{html.escape(terms.en)}</div>')
    gr.Markdown(
        "出典 / Source: [llm-jp/llm-jp-3-172b-beta1-instruct](https://huggingface.co/llm-jp/llm-jp-3-172b-beta1-instruct)"
        f" — 規約 ID / terms id `{terms.id}`, SHA-256 `{terms.sha256}`"
    )
    with gr.Group():
        name = gr.Textbox(label="氏名 / Name", max_lines=1)
        email = gr.Textbox(label="メールアドレス / Email", max_lines=1, type="email")
        affiliation = gr.Textbox(label="所属 / Affiliation", max_lines=1)
        purpose = gr.Textbox(label="利用目的 / Intended use", lines=2)
        agree = gr.Checkbox(label="上記の利用規約に同意します / I agree to the terms of use above")
    with gr.Row():
        accept = gr.Button("同意する / Accept", variant="primary")
        withdraw = gr.Button("同意を撤回する / Withdraw consent", variant="secondary", visible=False)
    status = gr.Markdown("同意するとチャットタブが使えるようになります。 / Accepting unlocks the Chat tab.")
    return _TermsForm([name, email, affiliation, purpose, agree], accept, withdraw, status)


def _slider(name: str, label: str, value: float, step: float) -> gr.Slider:
    lo, hi = bounds(name)
    info = SamplingOptions.model_fields[name].description
    return gr.Slider(minimum=lo, maximum=hi, value=value, step=step, label=label, info=info)


def _render_chat(registry: Registry) -> _Chat:
    default = registry.get(registry.default_id)
    s = default.sampling
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="会話 / Conversation", height=460, buttons=["copy"], feedback_options=None)
            status = gr.Markdown("", elem_id="chat-status")
            message = gr.Textbox(label="メッセージ / Message", placeholder="富士山について教えて", lines=1, max_lines=8)
            with gr.Row():
                send = gr.Button("送信 / Send", variant="primary")
                stop = gr.Button("停止 / Stop", variant="stop")
                clear = gr.Button("消去 / Clear")
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices=[(spec.label, spec.id) for spec in registry.specs.values()],
                value=default.id,
                label="モデル / Model",
            )
            licence = gr.Markdown(licence_markdown(default))
            acknowledge = gr.Button(ACKNOWLEDGE, visible=False, size="sm")
            with gr.Accordion("サンプリング / Sampling", open=True):
                sliders = [
                    _slider("temperature", "temperature (0 = greedy)", s.temperature, 0.05),
                    _slider("top_p", "top_p", s.top_p, 0.01),
                    _slider("top_k", "top_k (0 = off)", s.top_k, 1),
                    _slider("repetition_penalty", "repetition_penalty", s.repetition_penalty, 0.01),
                    _slider("max_new_tokens", "max_new_tokens", s.max_new_tokens, 1),
                ]
    return _Chat(model, licence, acknowledge, sliders, chatbot, status, message, send, stop, clear)


def _render_admin() -> _AdminView:
    gr.Markdown("## 監査ログ / Audit log")
    refresh = gr.Button("更新 / Refresh", size="sm")
    plot = gr.BarPlot(
        x="day", y="acceptances", y_lim=[0, None], sort="x", title="同意数(日別、UTC) / Acceptances per day (UTC)"
    )
    events = gr.Dataframe(headers=EVENT_COLUMNS, datatype="str", label="最新のイベント / Latest events", wrap=True)
    gr.Markdown("アクセスレポート (CSV) / Access report (CSV)")
    download = gr.HTML("")
    return _AdminView(gr.Textbox(render=False), gr.Button(render=False), plot, events, download, refresh)


def build(*, handlers: Handlers, admin: Admin, terms: Terms, registry: Registry, oauth: bool, secret: str) -> gr.Blocks:
    """The whole app: layout, then every event in one place."""
    with gr.Blocks(title=TITLE) as demo:
        # The receipt and the admin grant live in the browser (encrypted with the
        # server secret) and come with each request: nothing server-side is
        # keyed by the session hash alone.
        receipt = gr.BrowserState(None, storage_key="llmjp-demo-receipt", secret=secret)
        admin_grant = gr.BrowserState("", storage_key="llmjp-demo-admin", secret=secret)
        with gr.Row():
            gr.Markdown(f"# {TITLE}")
            if oauth:
                gr.LoginButton("Hugging Face でサインイン / Sign in with Hugging Face", size="sm", scale=0)
        with gr.Tabs(selected="terms") as tabs:
            with gr.Tab("利用規約 / Terms", id="terms"):
                form = _render_terms(terms)
                privacy.render(handlers.gate.retention_days)
                with gr.Accordion("管理者 / Administrators", open=False):
                    token_box = gr.Textbox(label="管理者トークン / Admin token", type="password", max_lines=1)
                    sign_in = gr.Button("管理者として開く / Open the Admin tab", size="sm")
            with gr.Tab(CHAT_LOCKED, id="chat", interactive=False) as chat_tab:
                chat = _render_chat(registry)
            with gr.Tab("管理 / Admin", id="admin", visible=False) as admin_tab:
                view = _render_admin()
        view.token_box, view.sign_in = token_box, sign_in
        _wire(demo, _Page(receipt, admin_grant, tabs, chat_tab, admin_tab, form, chat, view), handlers, admin)
    return demo


def _wire(demo: gr.Blocks, page: _Page, handlers: Handlers, admin: Admin) -> None:
    """Every event of the page and the public API, in one place."""
    private = {"api_visibility": "private"}
    form, chat, view, receipt = page.form, page.chat, page.admin, page.receipt
    tabs, chat_tab, admin_tab, admin_grant = page.tabs, page.chat_tab, page.admin_tab, page.admin_grant

    def page_state(
        model_id: str,
        receipt_value: str | None,
        grant: str,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> dict[Any, Any]:
        """Lock or unlock the chat, and show what this caller may do, from the server's record."""
        caller = handlers.caller(request, profile, receipt_value)
        accepted = handlers.gate.has_consent(caller)
        return {
            tabs: gr.Tabs(selected="chat" if accepted else "terms"),
            chat_tab: gr.Tab(interactive=accepted, label=CHAT_OPEN if accepted else CHAT_LOCKED),
            form.withdraw: gr.Button(visible=accepted),
            chat.acknowledge: gr.Button(
                visible=accepted and handlers.needs_acknowledgement(model_id, receipt_value, request, profile)
            ),
            admin_tab: gr.Tab(visible=admin.is_admin(profile, grant)),
        }

    state_outputs = [tabs, chat_tab, form.withdraw, chat.acknowledge, admin_tab]
    state_inputs = [chat.model, receipt, admin_grant]
    demo.load(user_errors(page_state), state_inputs, state_outputs, api_name="page_load", **private)

    # Terms: the page's button and the public /accept_terms share one handler.
    form.accept.click(
        user_errors(handlers.accept_terms),
        [*form.fields, receipt],
        [form.status, receipt],
        api_name="page_accept",
        **private,
    ).success(user_errors(page_state), state_inputs, state_outputs, api_name="page_unlock", **private)
    form.withdraw.click(
        user_errors(handlers.withdraw_consent), receipt, form.status, api_name="page_withdraw", **private
    ).success(user_errors(page_state), state_inputs, state_outputs, api_name="page_lock", **private)
    # Recording is a short database write: let several run at once (appends
    # still serialise on the log's head row) rather than one at a time.
    gr.api(user_errors(handlers.accept_terms), api_name="accept_terms", concurrency_limit=8)
    gr.api(user_errors(handlers.withdraw_consent), api_name="withdraw_consent")
    gr.api(user_errors(handlers.acknowledge_licence), api_name="acknowledge_licence")

    # Chat: the page streams into the chatbot; /chat streams text. Both go
    # through the same gate before any token is made, and the same lanes.
    reply = gr.on(
        [chat.send.click, chat.message.submit],
        user_errors(handlers.chat_ui),
        [chat.message, chat.chatbot, chat.model, *chat.sliders, receipt],
        [chat.chatbot, chat.message, chat.status],
        api_name="page_chat",
        # Fairness, the queue's bound and the "busy" message belong to the
        # model lanes (inference.lanes), one per model server: Gradio lets
        # every chat in at once and they wait there, seeing their position.
        concurrency_limit=None,
        **private,
    )
    # However the reply ended (done, refused, failed), the status line has nothing more to say.
    # Clearing runs in the browser alone: no server route outside the queue's limits.
    reply.then(None, None, chat.status, js="() => ''", api_name="page_chat_done", **private)
    chat.stop.click(None, None, None, cancels=[reply], api_name="page_stop", **private).then(
        None, None, chat.status, js="() => ''", api_name="page_stop_done", **private
    )
    chat.clear.click(None, None, chat.chatbot, js="() => []", api_name="page_clear", **private)
    chat.model.change(
        user_errors(handlers.card_defaults), chat.model, [*chat.sliders, chat.licence], api_name="page_model", **private
    ).then(user_errors(page_state), state_inputs, state_outputs, api_name="page_model_state", **private)
    chat.acknowledge.click(
        user_errors(handlers.acknowledge_licence), [chat.model, receipt], form.status, api_name="page_ack", **private
    ).success(lambda: gr.Button(visible=False), None, chat.acknowledge, api_name="page_ack_done", **private)
    gr.api(user_errors(handlers.chat_api), api_name="chat", concurrency_limit=None)

    # Admin: every handler checks the caller on the server.
    dashboard = [view.plot, view.events, view.download]
    view.sign_in.click(
        user_errors(admin.sign_in), view.token_box, [admin_grant, admin_tab], api_name="page_admin_sign_in", **private
    ).success(user_errors(admin.dashboard), admin_grant, dashboard, api_name="page_admin_open", **private)
    view.refresh.click(user_errors(admin.dashboard), admin_grant, dashboard, api_name="page_admin_refresh", **private)
    admin_tab.select(user_errors(admin.dashboard), admin_grant, dashboard, api_name="page_admin_select", **private)
    gr.api(user_errors(admin.admin_events), api_name="admin_events")
    gr.api(user_errors(admin.admin_export), api_name="admin_export")
    gr.api(user_errors(admin.admin_erase), api_name="admin_erase")
