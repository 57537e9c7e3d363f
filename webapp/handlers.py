"""Event handlers shared by the page and the public API.

Every handler derives the caller through ``Identities`` and asks the ``Gate``,
so the page and a direct API call are held to exactly the same rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import gradio as gr
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from inference import AppError, Inference, InvalidInput, Message, ModelSpec, SamplingOptions
from inference.progress import Status
from webapp.boundary.ratelimit import InFlight, RateLimits
from webapp.chat.availability import Availability
from webapp.chat.messages import text_of
from webapp.chat.models_info import catalogue, chat_defaults
from webapp.errors import ConsentRequired, LicenceNotAcknowledged
from webapp.gate.consent import AcceptanceForm, Gate
from webapp.gate.identity import Caller
from webapp.i18n import say
from webapp.text import require_encodable, visible

MAX_TURNS = 200
# One turn of a conversation: a message, or a reply of up to 2048 tokens.
MAX_TURN_CHARS = 20_000
# A history is bounded relative to the model's context before anything else
# looks at it: far more characters than the context holds in tokens cannot be
# a real conversation with this model. (Fitting by tokens, dropping the oldest
# turns, happens when the prompt is prepared.)
HISTORY_CHARS_PER_CONTEXT_TOKEN = 8


class _Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TURN_CHARS)


_HISTORY = TypeAdapter(list[_Turn])


class HistoryTooLong(InvalidInput):
    """The history is beyond any conversation the model could hold; nothing was generated."""

    def __init__(self, chars: int, limit: int) -> None:
        super().__init__(
            f"会話の履歴が長すぎます({chars} 文字、このモデルでは {limit} 文字まで)。古い発言を削除するか、新しい会話を始めてください。",
            f"The conversation history is too long ({chars} characters; at most {limit} for this model). Drop older turns or start a new chat.",
        )


def parse_history(history: object, *, max_chars: int | None = None) -> list[Message]:
    """Validate a client-supplied history into messages; raises ``InvalidInput``.

    Cheap checks first, in the request's own thread: the number of turns, each
    turn's length, then the total against ``max_chars``.
    """
    if history is None or history == []:
        return []
    malformed = InvalidInput(
        "history は {'role': 'user'|'assistant', 'content': 文字列} のリストにしてください。",
        "history must be a list of {'role': 'user'|'assistant', 'content': str}.",
    )
    if not isinstance(history, list):
        raise malformed
    if len(history) > MAX_TURNS:
        raise InvalidInput(
            f"会話が長すぎます(最大 {MAX_TURNS} 発言)。新しい会話を始めてください。",
            f"The conversation is too long (at most {MAX_TURNS} turns). Start a new chat.",
        )
    try:
        turns = _HISTORY.validate_python(
            # A list of parts (as Gradio's chatbot holds them) is taken as its text; anything else but a
            # string is left for validation to refuse.
            [
                {**t, "content": text_of(t["content"])}
                if isinstance(t, dict) and isinstance(t.get("content"), list)
                else t
                for t in history
            ]
        )
    except ValidationError:
        raise malformed from None
    for turn in turns:
        require_encodable(turn.content, "会話の履歴", "history")
    total = sum(len(t.content) for t in turns)
    if max_chars is not None and total > max_chars:
        raise HistoryTooLong(total, max_chars)
    return [{"role": t.role, "content": t.content} for t in turns]


class ReplyStopped(AppError):
    """The reply was stopped on the server because the visitor withdrew consent."""

    def __init__(self) -> None:
        super().__init__(
            "同意が撤回されたため、返答の生成を停止しました。",
            "The reply was stopped because consent was withdrawn.",
        )


def sampling_values(
    temperature: Any, top_p: Any, top_k: Any, repetition_penalty: Any, max_new_tokens: Any, seed: Any
) -> dict[str, Any]:
    """Raw sampling values as ``SamplingOptions.parse`` takes them (the page's controls and the API alike).

    A seed typed as text (the page's box) becomes a whole number, or None when
    empty; anything else is left as given for validation to refuse in words.
    """
    values: dict[str, Any] = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    if isinstance(seed, str):
        typed = seed.strip()
        values["seed"] = (int(typed) if typed.isdecimal() and typed.isascii() else typed) if typed else None
    return values


@dataclass(frozen=True)
class Admitted:
    """The first item of a reply: every check passed and the reply holds its place (nothing generated yet)."""

    options: SamplingOptions
    """The sampling as validated, which the reply is generated with."""


class Handlers:
    """The server side of terms, consent and chat."""

    def __init__(
        self,
        *,
        gate: Gate,
        inference: Inference,
        max_message_chars: int,
        limits: RateLimits,
        in_flight: InFlight,
        availability: Availability | None = None,
    ) -> None:
        self.gate = gate
        self.availability = availability
        self.inference = inference
        self.max_message_chars = max_message_chars
        self.limits = limits
        self.in_flight = in_flight

    def caller(self, request: gr.Request | None, profile: gr.OAuthProfile | None, receipt: object) -> Caller:
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
        self.limits.check("consent", caller)
        form = AcceptanceForm.parse(name=name, email=email, affiliation=affiliation, purpose=purpose, agree=agree)
        if caller.identity is None:
            self.limits.check("new_identity", caller)
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
        """Withdraw consent: the chat locks and replies in flight stop at once, and the withdrawal is recorded."""
        caller = self.caller(request, profile, receipt)
        self.limits.check("consent", caller)
        self.gate.withdraw(caller)
        return "同意を撤回しました。チャットはロックされました。 / Consent withdrawn; the chat is locked."

    def acknowledge_licence(
        self,
        model_id: str,
        receipt: str | None = None,
        request: gr.Request = None,  # type: ignore[assignment]
        profile: gr.OAuthProfile | None = None,
    ) -> str:
        """Acknowledge the licence of ``model_id`` (needed once for non-commercial licences)."""
        caller = self.caller(request, profile, receipt)
        self.limits.check("consent", caller)
        spec = self.inference.registry.get(model_id)
        self.gate.acknowledge(caller, spec)
        return " / ".join(say(lang, "licence_acknowledged").format(licence=spec.license.name) for lang in ("ja", "en"))

    # -- chat ----------------------------------------------------------------

    def _admit(self, caller: Caller, message: object, spec: ModelSpec, sampling: dict[str, Any]) -> SamplingOptions:
        """The gate, then the message and the options: all before any token is generated."""
        self.gate.admit(caller, spec)
        # Before the message box is emptied: nothing is lost, and no one waits for a load that cannot succeed.
        if self.availability is not None and (unavailable := self.availability.reason(spec)):
            raise unavailable
        if not isinstance(message, str) or not visible(message):
            raise InvalidInput("メッセージを入力してください。", "Please type a message.")
        if len(message) > self.max_message_chars:
            raise InvalidInput(
                f"メッセージが長すぎます({len(message)} 文字、上限 {self.max_message_chars} 文字)。",
                f"The message is too long ({len(message)} characters; the limit is {self.max_message_chars}).",
            )
        require_encodable(message, "メッセージ", "message")
        return SamplingOptions.parse(**sampling)

    async def stream_reply(
        self,
        request: gr.Request | None,
        profile: gr.OAuthProfile | None,
        receipt: object,
        message: Any,
        model_id: Any,
        history: Any,
        sampling: dict[str, Any],
    ) -> AsyncGenerator[tuple[list[Message], str | Status | Admitted]]:
        """Every check, then the reply (the page's and the API's one way in): yields the validated history
        with ``Admitted`` once every check has passed, then with each item of the stream.

        Cheap checks (rate, shape and size of the input) run here; the gate
        reads (and on refusal writes) the database, so it runs off the event
        loop. The reply holds one of the caller's in-flight slots, whose stop
        event a withdrawal of consent sets.
        """
        caller = self.caller(request, profile, receipt)
        self.limits.check("chat", caller)
        spec = self.inference.registry.get(model_id)
        past = parse_history(history, max_chars=spec.context * HISTORY_CHARS_PER_CONTEXT_TOKEN)
        options = await asyncio.to_thread(self._admit, caller, message, spec, sampling)
        with self.in_flight.hold(caller) as ticket:
            yield past, Admitted(options)
            who = (caller.client_hash or "", caller.limit_key)  # the model's places go round these
            async for item in self.inference.stream(spec.id, past, message, options, stop=ticket.stop, who=who):
                yield past, item
            if ticket.withdrawn:
                raise ReplyStopped()

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
        given = sampling_values(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        sampling = chat_defaults(spec).model_dump() | {k: v for k, v in given.items() if v is not None}
        reply = ""
        try:
            async for _, item in self.stream_reply(request, profile, receipt, message, model_id, history, sampling):
                if isinstance(item, str):
                    reply += item
                    yield reply
        # An API caller has no tabs: the refusal names the endpoint to call.
        except ConsentRequired:
            raise ConsentRequired(api=True) from None
        except LicenceNotAcknowledged as exc:
            raise LicenceNotAcknowledged(exc.model_label, exc.licence, api=True) from None

    def models(self) -> list[dict[str, Any]]:
        """The offered models: id, label, architecture, dense or MoE, context, licence, default sampling, loaded."""
        local = getattr(self.inference.backend, "is_loaded", None)
        engines = self.inference.engines

        def is_loaded(model_id: str) -> bool:
            if engines is not None and self.inference.registry.get(model_id).engine is not None:
                return engines.is_loaded(model_id)  # type: ignore[attr-defined]
            return bool(local and local(model_id))

        return catalogue(self.inference.registry, is_loaded, self.inference.max_batch)

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
