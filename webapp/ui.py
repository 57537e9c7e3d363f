"""The page: a Terms tab that gates a Chat tab. Layout in small builders, events wired in one place."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from inference import Registry, SamplingOptions
from inference.sampling import bounds
from webapp.handlers import Handlers, licence_markdown, wrap
from webapp.terms import Terms

TITLE = "LLM-jp チャット / LLM-jp Chat"
CHAT_LOCKED = "チャット(規約への同意が必要) / Chat (accept the terms first)"
CHAT_OPEN = "チャット / Chat"

CSS = """
.terms-text { white-space: pre-wrap; font-size: 0.92em; line-height: 1.6; max-height: 28em; overflow-y: auto;
  padding: 0.8em; border: 1px solid var(--border-color-primary); border-radius: 6px; }
"""
FONTS = ["Noto Sans CJK JP", "Noto Sans JP", "Hiragino Sans", "Yu Gothic", "Meiryo", "system-ui", "sans-serif"]


def launch_options() -> dict[str, Any]:
    """Arguments for ``demo.launch`` that belong to the look of the page."""
    # Local fonts only: the page must not wait on a font service, and Japanese
    # must render with a CJK face rather than boxes.
    return {"theme": gr.themes.Default(font=FONTS, font_mono=["Noto Sans Mono CJK JP", "monospace"]), "css": CSS}


@dataclass
class _Chat:
    model: gr.Dropdown
    licence: gr.Markdown
    sliders: list[gr.components.Component]
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button


@dataclass
class _TermsForm:
    fields: list[gr.components.Component]
    accept: gr.Button
    status: gr.Markdown


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
        f"出典 / Source: [llm-jp/llm-jp-3-172b-beta1-instruct](https://huggingface.co/llm-jp/llm-jp-3-172b-beta1-instruct)"
        f" — 規約 ID / terms id `{terms.id}`, SHA-256 `{terms.sha256}`"
    )
    with gr.Group():
        name = gr.Textbox(label="氏名 / Name", max_lines=1)
        email = gr.Textbox(label="メールアドレス / Email", max_lines=1, type="email")
        affiliation = gr.Textbox(label="所属 / Affiliation", max_lines=1)
        purpose = gr.Textbox(label="利用目的 / Intended use", lines=2)
        agree = gr.Checkbox(label="上記の利用規約に同意します / I agree to the terms of use above")
    accept = gr.Button("同意する / Accept", variant="primary")
    status = gr.Markdown("同意するとチャットタブが使えるようになります。 / Accepting unlocks the Chat tab.")
    return _TermsForm([name, email, affiliation, purpose, agree], accept, status)


def _slider(name: str, label: str, value: float, step: float) -> gr.Slider:
    lo, hi = bounds(name)
    return gr.Slider(
        minimum=lo, maximum=hi, value=value, step=step, label=label, info=SamplingOptions.model_fields[name].description
    )


def _render_chat(registry: Registry) -> _Chat:
    default = registry.get(registry.default_id)
    s = default.sampling
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="会話 / Conversation", height=460, buttons=["copy"], feedback_options=None)
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
            with gr.Accordion("サンプリング / Sampling", open=True):
                sliders = [
                    _slider("temperature", "temperature (0 = greedy)", s.temperature, 0.05),
                    _slider("top_p", "top_p", s.top_p, 0.01),
                    _slider("top_k", "top_k (0 = off)", s.top_k, 1),
                    _slider("repetition_penalty", "repetition_penalty", s.repetition_penalty, 0.01),
                    _slider("max_new_tokens", "max_new_tokens", s.max_new_tokens, 1),
                ]
    return _Chat(model, licence, sliders, chatbot, message, send, stop, clear)


def build(*, handlers: Handlers, terms: Terms, registry: Registry) -> gr.Blocks:
    """The whole app: layout, then every event in one place."""
    fns = wrap(handlers)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}")
        with gr.Tabs(selected="terms") as tabs:
            with gr.Tab("利用規約 / Terms", id="terms"):
                form = _render_terms(terms)
            with gr.Tab(CHAT_LOCKED, id="chat", interactive=False) as chat_tab:
                chat = _render_chat(registry)

        # Terms: the page's button and the public /accept_terms share one handler.
        form.accept.click(
            fns["accept_terms"], form.fields, form.status, api_name="page_accept", api_visibility="private"
        ).success(
            lambda: (gr.Tabs(selected="chat"), gr.Tab(interactive=True, label=CHAT_OPEN)),
            None,
            [tabs, chat_tab],
            api_name="page_unlock",
            api_visibility="private",
            queue=False,
        )
        gr.api(fns["accept_terms"], api_name="accept_terms")

        # Chat: the page streams into the chatbot; /chat streams text. Both
        # go through the same server-side gate before any token is made.
        inputs = [chat.message, chat.chatbot, chat.model, *chat.sliders]
        reply = gr.on(
            [chat.send.click, chat.message.submit],
            fns["chat_ui"],
            inputs,
            [chat.chatbot, chat.message],
            api_name="page_chat",
            api_visibility="private",
            concurrency_id="generate",
        )
        chat.stop.click(None, None, None, cancels=[reply], api_name="page_stop", api_visibility="private")
        chat.clear.click(lambda: [], None, chat.chatbot, api_name="page_clear", api_visibility="private", queue=False)
        chat.model.change(
            fns["card_defaults"],
            chat.model,
            [*chat.sliders, chat.licence],
            api_name="page_model",
            api_visibility="private",
            queue=False,
        )
        gr.api(fns["chat_api"], api_name="chat", concurrency_id="generate")
    return demo
