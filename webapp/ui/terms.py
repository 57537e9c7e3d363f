"""The Terms tab: the terms, the acceptance form with its errors beside the fields, and withdrawal."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import gradio as gr
from pydantic import ValidationError

from inference import AppError
from webapp.gate.consent import AcceptanceForm
from webapp.gate.terms import Terms
from webapp.handlers import Handlers
from webapp.i18n import pick, say, t

FIELDS = ("name", "email", "affiliation", "purpose", "agree")


@dataclass
class TermsView:
    fields: list[Any]
    accept: gr.Button
    withdraw: gr.Button
    confirm: gr.Group
    confirm_yes: gr.Button
    confirm_no: gr.Button
    status: gr.Markdown
    fill: gr.Column
    """The form itself: shown only to a visitor who must accept (first visit, new terms, after withdrawal)."""
    accepted_note: gr.Markdown
    """For a returning visitor: when they accepted, and which version."""


def render(terms: Terms, privacy_notice: Callable[[], None]) -> TermsView:
    gr.Markdown(t("terms_intro"))
    with gr.Tabs(elem_id="terms-texts"):
        # Each text is named in its own language, on either page.
        with gr.Tab("日本語", id="terms-ja"):
            gr.HTML(f'<div class="terms-text" lang="ja">{html.escape(terms.ja)}</div>')
        with gr.Tab("English", id="terms-en"):
            gr.HTML(f'<div class="terms-text" lang="en">{html.escape(terms.en)}</div>')
    with gr.Group(elem_classes=["terms-source"]):
        gr.Markdown(t("terms_source"))
        gr.HTML(
            '<p class="terms-hash"><a href="https://huggingface.co/llm-jp/llm-jp-3-172b-beta1-instruct" '
            'target="_blank" rel="noopener">llm-jp/llm-jp-3-172b-beta1-instruct</a> · '
            f"ID <code>{html.escape(terms.id)}</code> · SHA-256 <code>{terms.sha256}</code></p>"
        )
    with gr.Row():
        with gr.Column(scale=3, elem_id="acceptance-form"):
            accepted_note = gr.Markdown("", visible=False, elem_id="accepted-note")
            with gr.Column(elem_id="form-fill") as fill:
                gr.Markdown(t("form_heading"))
                with gr.Group():
                    name = gr.Textbox(label=t("name"), max_lines=1, elem_id="field-name")
                    email = gr.Textbox(label=t("email"), max_lines=1, type="email", elem_id="field-email")
                    affiliation = gr.Textbox(label=t("affiliation"), max_lines=1, elem_id="field-affiliation")
                    purpose = gr.Textbox(label=t("purpose"), lines=2, elem_id="field-purpose")
                    agree = gr.Checkbox(label=t("agree"), elem_id="field-agree")
                with gr.Row():
                    accept = gr.Button(t("accept"), variant="primary")
            status = gr.Markdown(t("status_initial"), elem_id="terms-status")
            withdraw = gr.Button(t("withdraw"), variant="secondary", size="sm", visible=False)
            with gr.Group(visible=False, elem_id="withdraw-confirm") as confirm:
                gr.Markdown(t("withdraw_confirm"))
                with gr.Row():
                    yes = gr.Button(t("withdraw_yes"), variant="stop", size="sm")
                    no = gr.Button(t("withdraw_no"), size="sm")
        with gr.Column(scale=2, elem_id="privacy-column"):
            # What is stored, why and for how long: beside the form that collects it.
            privacy_notice()
    return TermsView(
        [name, email, affiliation, purpose, agree], accept, withdraw, confirm, yes, no, status, fill, accepted_note
    )


def accepted_text(lang: str | None, when: datetime, terms: Terms) -> str:
    """ "Accepted on <date> (version <short hash>)", in the page's language (Japan's time on a Japanese page)."""
    short = terms.sha256[:12]
    jst = when.astimezone(timezone(timedelta(hours=9), "JST")).strftime("%Y-%m-%d %H:%M")
    utc = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return pick(
        lang,
        f"✓ {jst}(日本時間)に利用規約(版 `{short}`)に同意済みです。チャットを利用できます。",
        f"✓ You accepted the terms of use on {utc} (version `{short}`); the chat is open.",
    )


def field_errors(values: dict[str, Any]) -> dict[str, str]:
    """Each bad field of the form, with the key of the message to show beside it."""
    try:
        AcceptanceForm.model_validate(values)
    except ValidationError as exc:
        bad: dict[str, str] = {}
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            value = values.get(field)
            if field == "agree":
                key = "field_agree"
            elif not isinstance(value, str) or not value.strip():
                key = "field_required"
            elif field == "email":
                key = "field_email"
            else:
                key = "field_invalid"
            bad.setdefault(field, key)
        return bad
    return {}


def _field(kind: type, name: str, message: str | None, **value: Any) -> Any:
    # The message sits in the field's own description line, marked as an error.
    # The label goes with the update, or it would stay in the language of the moment.
    return kind(label=t(name), info=message or None, elem_classes=["field-error"] if message else [], **value)


class TermsPage:
    """The Terms tab's handlers: nothing raises into Gradio, errors show beside the fields."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    def accept(
        self,
        name: str,
        email: str,
        affiliation: str,
        purpose: str,
        agree: bool,
        receipt: str | None,
        lang: str,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:
        """Outputs: the five fields, the status line, the receipt."""
        values = dict(zip(FIELDS, (name, email, affiliation, purpose, agree), strict=True))
        bad = field_errors(values)
        kinds = (gr.Textbox, gr.Textbox, gr.Textbox, gr.Textbox, gr.Checkbox)
        fields = [_field(k, f, say(lang, bad[f]) if f in bad else None) for f, k in zip(FIELDS, kinds, strict=True)]
        if bad:
            summary = pick(
                lang,
                "入力を確認してください(各項目の下に理由があります)。",
                "Please check the form (reasons are shown under each field).",
            )
            return *fields, f"⚠ {summary}", gr.skip()
        try:
            _, token = self.handlers.accept_terms(name, email, affiliation, purpose, agree, receipt, request, profile)
        except AppError as exc:
            return *fields, f"⚠ {pick(lang, exc.ja, exc.en)}", gr.skip()
        terms = self.handlers.gate.terms
        return *fields, f"✓ {say(lang, 'accepted')} ({terms.id}, SHA-256 {terms.sha256[:12]}…)", token

    def returning(
        self, receipt: str | None, lang: str, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> tuple[Any, Any]:
        """Outputs: the accepted note and the form. A visitor holding an acceptance of these terms sees when
        they accepted and which version, not an empty form; the form shows when an acceptance is needed."""
        if not isinstance(lang, str) or len(lang) > 16:
            lang = "ja"  # the page's own radio sends one of two codes; anything else reads as Japanese
        when = self.handlers.gate.accepted_at(self.handlers.caller(request, profile, receipt))
        if when is None:
            return gr.Markdown("", visible=False), gr.Column(visible=True)
        return gr.Markdown(accepted_text(lang, when, self.handlers.gate.terms), visible=True), gr.Column(visible=False)

    def withdraw(
        self, receipt: str | None, lang: str, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> tuple[Any, ...]:
        """Outputs: the status line, the confirmation (hidden again), the five fields (cleared)."""
        try:
            self.handlers.withdraw_consent(receipt, request, profile)
        except AppError as exc:
            return f"⚠ {pick(lang, exc.ja, exc.en)}", gr.Group(visible=False), *([gr.skip()] * 5)
        cleared = [_field(gr.Textbox, f, None, value="") for f in FIELDS[:4]] + [
            _field(gr.Checkbox, "agree", None, value=False)
        ]
        return f"✓ {say(lang, 'withdrawn')}", gr.Group(visible=False), *cleared
