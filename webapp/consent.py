"""Who the caller is, what they accepted, and the gate on generation."""

from __future__ import annotations

import re
import unicodedata

import gradio as gr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session, sessionmaker

from db import acceptances
from webapp.errors import ConsentRequired, InvalidForm
from webapp.terms import Terms

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_USER_AGENT_MAX = 512

_FIELD_NAMES = {
    "name": ("氏名", "name"),
    "email": ("メールアドレス", "email"),
    "affiliation": ("所属", "affiliation"),
    "purpose": ("利用目的", "intended use"),
    "agree": ("同意のチェック", "the 'I agree' box"),
}


def identify(request: gr.Request | None) -> str:
    """The caller's identity for the gate: today, their Gradio session.

    Fails closed: a call without a session can never match an acceptance.
    """
    session_hash = getattr(request, "session_hash", None) if request is not None else None
    if not session_hash:
        raise ConsentRequired()
    return f"session:{session_hash}"


def user_agent(request: gr.Request | None) -> str | None:
    """The caller's User-Agent header, truncated; nothing else about the connection is kept."""
    headers = getattr(request, "headers", None) or {}
    agent = headers.get("user-agent")
    return agent[:_USER_AGENT_MAX] if agent else None


def _no_controls(value: str, *, multiline: bool = False) -> str:
    allowed = {"\n", "\t"} if multiline else set()
    if any(unicodedata.category(c) == "Cc" and c not in allowed for c in value):
        raise ValueError("control characters")
    return value


class AcceptanceForm(BaseModel):
    """The acceptance form, as the hub's gated-model form asks it."""

    model_config = ConfigDict(str_strip_whitespace=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320)
    affiliation: str = Field(min_length=1, max_length=300)
    purpose: str = Field(min_length=1, max_length=2000)
    agree: bool

    @field_validator("name", "email", "affiliation")
    @classmethod
    def _single_line(cls, value: str) -> str:
        return _no_controls(value)

    @field_validator("purpose")
    @classmethod
    def _text(cls, value: str) -> str:
        return _no_controls(value, multiline=True)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("not an email address")
        return value

    @field_validator("agree")
    @classmethod
    def _agreed(cls, value: bool) -> bool:
        if value is not True:
            raise ValueError("must agree")
        return value

    @classmethod
    def parse(cls, **values: object) -> AcceptanceForm:
        """Validate the raw form, raising one bilingual ``InvalidForm`` naming every bad field."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            fields = dict.fromkeys(str(e["loc"][0]) if e["loc"] else "?" for e in exc.errors())
            names = [_FIELD_NAMES.get(f, (f, f)) for f in fields]
            raise InvalidForm(
                "次の項目を確認してください: "
                + "、".join(ja for ja, _ in names)
                + "(必須項目の入力、正しいメールアドレス、制御文字なし、利用規約への同意が必要です)",
                "Please check: "
                + ", ".join(en for _, en in names)
                + " (required fields, a valid email, no control characters, and ticking 'I agree').",
            ) from None

    def contact(self) -> acceptances.Contact:
        """The contact fields to store."""
        return acceptances.Contact(name=self.name, email=self.email, affiliation=self.affiliation, purpose=self.purpose)


class Consent:
    """Records acceptances and decides, on the server, who may generate."""

    def __init__(self, sessions: sessionmaker[Session], terms: Terms) -> None:
        self.sessions = sessions
        self.terms = terms
        self._sha256 = terms.sha256

    def accept(self, identity: str, form: AcceptanceForm, agent: str | None) -> None:
        """Record that ``identity`` accepted the current terms; one committed row or nothing."""
        with self.sessions.begin() as session:
            acceptances.record(
                session,
                identity=identity,
                terms_id=self.terms.id,
                terms_sha256=self._sha256,
                contact=form.contact(),
                user_agent=agent,
            )

    def allows(self, identity: str) -> bool:
        """Whether ``identity`` has accepted the current terms."""
        with self.sessions() as session:
            return acceptances.has_accepted(
                session, identity=identity, terms_id=self.terms.id, terms_sha256=self._sha256
            )

    def require(self, identity: str) -> None:
        """Raise ``ConsentRequired`` unless ``identity`` has accepted the current terms."""
        if not self.allows(identity):
            raise ConsentRequired()
