"""Event handlers shared by the page and the public API.

Every handler derives the caller through ``Identities`` and asks the ``Gate``,
so the page and a direct API call are held to exactly the same rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import gradio as gr
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from inference import Inference, InvalidInput, Message, ModelSpec, SamplingOptions
from webapp.consent import AcceptanceForm, Gate
from webapp.errors import ConsentRequired, LicenceNotAcknowledged
from webapp.identity import Caller
from webapp.models_info import catalogue, chat_defaults

MAX_TURNS = 200


class _Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str = Field(max_length=100_000)


_HISTORY = TypeAdapter(list[_Turn])


def _text_of(content: Any) -> str:
    """A chat message's text, whether Gradio gives a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def parse_history(history: list[dict[str, Any]] | None) -> list[Message]:
    """Validate a client-supplied history into messages; raises ``InvalidInput``."""
    if not history:
        return []
    try:
        turns = _HISTORY.validate_python(
            [{**t, "content": _text_of(t.get("content"))} if isinstance(t, dict) else t for t in history]
        )
    except ValidationError:
        raise InvalidInput(
            "history は {'role': 'user'|'assistant', 'content': 文字列} のリストにしてください。",
            "history must be a list of {'role': 'user'|'assistant', 'content': str}.",
        ) from None
    if len(turns) > MAX_TURNS:
        raise InvalidInput(
            f"会話が長すぎます(最大 {MAX_TURNS} 発言)。チャットを消去してください。",
            f"The conversation is too long (at most {MAX_TURNS} turns). Clear the chat.",
        )
    return [{"role": t.role, "content": t.content} for t in turns]


def _sampling(
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    repetition_penalty: float | None,
    max_new_tokens: int | None,
) -> dict[str, Any]:
    return {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        "max_new_tokens": max_new_tokens,
    }


class Handlers:
    """The server side of terms, consent and chat."""

    def __init__(self, *, gate: Gate, inference: Inference, max_message_chars: int) -> None:
        self.gate = gate
        self.inference = inference
        self.max_message_chars = max_message_chars

    def caller(self, request: gr.Request | None, profile: gr.OAuthProfile | None, receipt: str | None) -> Caller:
        """The caller, from their account, receipt or session."""
        return self.gate.identities.caller(request, profile, receipt)

    # -- terms and consent ---------------------------------------------------

    def accept_terms(
        self,
        name: str,
        email: str,
        affiliation: str,
        purpose: str,
        agree: bool,
        receipt: str | None = None,
        request: gr.Request = None,  # type: ignore[assignment]
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[str, str]:
        """Record acceptance of the current terms; returns a message and a receipt for later visits."""
        caller = self.caller(request, profile, receipt)
        form = AcceptanceForm.parse(name=name, email=email, affiliation=affiliation, purpose=purpose, agree=agree)
        token = self.gate.accept(caller, form)
        terms = self.gate.terms
        return (
            f"利用規約への同意を記録しました(規約 {terms.id}、SHA-256 {terms.sha256[:12]}…)。チャットを利用できます。"
            " / Your acceptance is recorded; the chat is unlocked.",
            token,
        )

    def withdraw_consent(
        self,
        receipt: str | None = None,
        request: gr.Request = None,  # type: ignore[assignment]
        profile: gr.OAuthProfile | None = None,
    ) -> str:
        """Withdraw consent: the chat locks at once, and the withdrawal is recorded."""
        self.gate.withdraw(self.caller(request, profile, receipt))
        return "同意を撤回しました。チャットはロックされました。 / Consent withdrawn; the chat is locked."

    def acknowledge_licence(
        self,
        model_id: str,
        receipt: str | None = None,
        request: gr.Request = None,  # type: ignore[assignment]
        profile: gr.OAuthProfile | None = None,
    ) -> str:
        """Acknowledge the licence of ``model_id`` (needed once for non-commercial licences)."""
        spec = self.inference.registry.get(model_id)
        self.gate.acknowledge(self.caller(request, profile, receipt), spec)
        return f"{spec.license.name} の条件を確認しました。 / Acknowledged: {spec.license.name}."

    # -- chat ----------------------------------------------------------------

    def _admit(
        self, caller: Caller, message: str, model_id: str, sampling: dict[str, Any]
    ) -> tuple[str, SamplingOptions]:
        """All checks before any token is generated: the gate first, then the input."""
        spec = self.inference.registry.get(model_id)
        self.gate.admit(caller, spec)
        if not isinstance(message, str) or not message.strip():
            raise InvalidInput("メッセージを入力してください。", "Please type a message.")
        if len(message) > self.max_message_chars:
            raise InvalidInput(
                f"メッセージが長すぎます({len(message)} 文字、上限 {self.max_message_chars} 文字)。",
                f"The message is too long ({len(message)} characters; the limit is {self.max_message_chars}).",
            )
        return message, SamplingOptions.parse(**sampling)

    async def _admitted(
        self,
        request: gr.Request | None,
        profile: gr.OAuthProfile | None,
        receipt: str | None,
        message: str,
        model_id: str,
        sampling: dict[str, Any],
    ) -> tuple[str, SamplingOptions]:
        # The gate reads (and on refusal writes) the database: off the event loop.
        caller = self.caller(request, profile, receipt)
        return await asyncio.to_thread(self._admit, caller, message, model_id, sampling)

    async def prepare(
        self,
        request: gr.Request | None,
        profile: gr.OAuthProfile | None,
        receipt: str | None,
        message: str,
        model_id: str,
        sampling: dict[str, Any],
        history: list[dict[str, Any]] | None,
    ) -> tuple[list[Message], str, SamplingOptions]:
        """Every check before a reply: the history, the gate, the message and the sampling."""
        past = parse_history(history)
        text, options = await self._admitted(request, profile, receipt, message, model_id, sampling)
        return past, text, options

    async def chat_api(
        self,
        message: str,
        model_id: str,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        max_new_tokens: int | None = None,
        history: list[dict[str, Any]] | None = None,
        receipt: str | None = None,
        seed: int | None = None,
        request: gr.Request = None,  # type: ignore[assignment]
        profile: gr.OAuthProfile | None = None,
    ) -> AsyncIterator[str]:
        """Stream a reply to ``message``; each update is the reply so far.

        Sampling values left out take the model's defaults (``/models`` lists
        them). Waiting (the queue, a download, a load) is only a delay here.
        """
        spec = self.inference.registry.get(model_id)
        given = _sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens) | {"seed": seed}
        sampling = chat_defaults(spec).model_dump() | {k: v for k, v in given.items() if v is not None}
        try:
            past, text, options = await self.prepare(request, profile, receipt, message, model_id, sampling, history)
        except ConsentRequired:
            raise ConsentRequired(api=True) from None
        except LicenceNotAcknowledged as exc:
            raise LicenceNotAcknowledged(exc.model_label, exc.licence, api=True) from None
        reply = ""
        async for item in self.inference.stream(model_id, past, text, options):
            if isinstance(item, str):
                reply += item
                yield reply

    def models(self) -> list[dict[str, Any]]:
        """The offered models: id, label, architecture, dense or MoE, context, licence, default sampling, loaded."""
        is_loaded = getattr(self.inference.backend, "is_loaded", None)
        return catalogue(self.inference.registry, is_loaded)

    def needs_acknowledgement(
        self, model_id: str, receipt: str | None, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> bool:
        """Whether the page should offer the licence acknowledgement for ``model_id``."""
        spec = self.inference.registry.get(model_id)
        return not self.gate.has_acknowledged(self.caller(request, profile, receipt), spec)


def licence_markdown(spec: ModelSpec, lang: str | None = None) -> str:
    """One line naming the model's licence (and its note), for beside the model; bilingual without ``lang``."""
    lic = spec.license
    name = f"[{lic.name}]({lic.url})" if lic.url else lic.name
    if lang is None:
        note = f" — {lic.note_ja} / {lic.note_en}" if lic.note_ja else ""
        return f"**ライセンス / Licence:** {name}{note}"
    en = lang.startswith("en")
    note = (lic.note_en if en else lic.note_ja) if lic.note_ja else ""
    return f"**{'Licence' if en else 'ライセンス'}:** {name}" + (f" — {note}" if note else "")
