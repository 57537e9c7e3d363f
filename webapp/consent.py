"""Who the caller is, what they accepted, and the gate on generation."""

from __future__ import annotations

import re
import unicodedata

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.models import EventKind
from inference import InvalidInput, ModelSpec
from webapp.errors import ConsentRequired, InvalidForm, LicenceNotAcknowledged
from webapp.identity import Caller, Identities
from webapp.receipts import Receipt
from webapp.terms import Terms

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

_FIELD_NAMES = {
    "name": ("氏名", "name"),
    "email": ("メールアドレス", "email"),
    "affiliation": ("所属", "affiliation"),
    "purpose": ("利用目的", "intended use"),
    "agree": ("同意のチェック", "the 'I agree' box"),
}


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

    def contact(self) -> audit.Contact:
        """The contact fields to store."""
        return audit.Contact(name=self.name, email=self.email, affiliation=self.affiliation, purpose=self.purpose)


class Gate:
    """Records consent and decides, on the server, who may generate with which model.

    The only place the decision is made; the page and the API both call it.
    """

    def __init__(self, sessions: sessionmaker[Session], terms: Terms, identities: Identities) -> None:
        self.sessions = sessions
        self.terms = terms
        self.identities = identities
        self._sha256 = terms.sha256

    def _meta(self, caller: Caller) -> dict[str, str | None]:
        return {"user_agent": caller.user_agent, "client_hash": caller.client_hash}

    def accept(self, caller: Caller, form: AcceptanceForm) -> str:
        """Record acceptance of the current terms; returns a receipt for an anonymous caller ('' when signed in)."""
        with self.sessions.begin() as session:
            audit.accept(
                session,
                identity=caller.identity,
                terms_id=self.terms.id,
                terms_sha256=self._sha256,
                contact=form.contact(),
                **self._meta(caller),
            )
        if caller.username:
            return ""
        return self.identities.receipts.issue(Receipt(caller.identity, self.terms.id, self._sha256))

    # Each write transaction starts with its write (audit.append updates the
    # head row first). Checks run in their own session before it: on SQLite a
    # transaction that reads first cannot wait for the lock when it then writes.

    def withdraw(self, caller: Caller) -> None:
        """Record that ``caller`` withdraws consent; their chat locks at once."""
        if not self.has_consent(caller):
            raise InvalidInput("撤回できる同意がありません。", "There is no consent to withdraw.")
        with self.sessions.begin() as session:
            audit.append(session, kind=EventKind.WITHDRAWN, identity=caller.identity, **self._meta(caller))

    def acknowledge(self, caller: Caller, spec: ModelSpec) -> None:
        """Record ``caller``'s acknowledgement of ``spec``'s licence, once per identity and licence."""
        self.require_consent(caller)
        licence = spec.license.name
        if not self.has_acknowledged(caller, spec):
            with self.sessions.begin() as session:
                audit.append(
                    session,
                    kind=EventKind.LICENCE_ACKNOWLEDGED,
                    identity=caller.identity,
                    licence=licence,
                    model_id=spec.id,
                    **self._meta(caller),
                )

    def has_consent(self, caller: Caller) -> bool:
        """Whether ``caller`` holds an acceptance of the current terms."""
        with self.sessions() as session:
            return audit.has_consent(
                session, identity=caller.identity, terms_id=self.terms.id, terms_sha256=self._sha256
            )

    def has_acknowledged(self, caller: Caller, spec: ModelSpec) -> bool:
        """Whether ``spec``'s licence needs nothing more from ``caller``."""
        if not spec.license.needs_acknowledgement:
            return True
        with self.sessions() as session:
            return audit.has_acknowledged(session, identity=caller.identity, licence=spec.license.name)

    def require_consent(self, caller: Caller) -> None:
        """Raise ``ConsentRequired`` unless ``caller`` accepted the current terms."""
        if not self.has_consent(caller):
            raise ConsentRequired()

    def admit(self, caller: Caller, spec: ModelSpec) -> None:
        """Allow generation with ``spec`` or raise; every refusal is recorded."""
        if not self.has_consent(caller):
            self._refused(caller, spec, "no_consent")
            raise ConsentRequired()
        if not self.has_acknowledged(caller, spec):
            self._refused(caller, spec, "licence_not_acknowledged")
            raise LicenceNotAcknowledged(spec.label, spec.license.name)

    def _refused(self, caller: Caller, spec: ModelSpec, reason: str) -> None:
        with self.sessions.begin() as session:
            audit.append(
                session,
                kind=EventKind.REFUSED,
                identity=caller.identity,
                model_id=spec.id,
                reason=reason,
                **self._meta(caller),
            )
