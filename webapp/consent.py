"""Who the caller is, what they accepted, and the gate on generation."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.models import EventKind
from inference import InvalidInput, ModelSpec
from webapp.errors import ConsentRequired, InvalidForm, LicenceNotAcknowledged
from webapp.identity import Caller, Identities
from webapp.terms import Terms
from webapp.text import BIDI_CONTROLS, encodable, visible

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

_FIELD_NAMES = {
    "name": ("氏名", "name"),
    "email": ("メールアドレス", "email"),
    "affiliation": ("所属", "affiliation"),
    "purpose": ("利用目的", "intended use"),
    "agree": ("同意のチェック", "the 'I agree' box"),
}


def _clean(value: str, *, multiline: bool = False) -> str:
    allowed = {"\n", "\t"} if multiline else set()
    if not encodable(value):
        raise ValueError("not valid text")
    if any(unicodedata.category(c) == "Cc" and c not in allowed for c in value):
        raise ValueError("control characters")
    if not multiline and any(c in BIDI_CONTROLS for c in value):
        raise ValueError("bidi controls")
    if not visible(value):
        raise ValueError("nothing visible")
    return value


class AcceptanceForm(BaseModel):
    """The acceptance form, as the hub's gated-model form asks it.

    Strict: every field must be a string and ``agree`` the boolean ``true``
    (``"yes"``, ``"true"`` or ``1`` are not consent); a field that shows
    nothing once invisible characters are taken away is empty.
    """

    model_config = ConfigDict(str_strip_whitespace=True, extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320)
    affiliation: str = Field(min_length=1, max_length=300)
    purpose: str = Field(min_length=1, max_length=2000)
    agree: bool  # strict: only the JSON boolean true

    @field_validator("name", "email", "affiliation")
    @classmethod
    def _single_line(cls, value: str) -> str:
        return _clean(value)

    @field_validator("purpose")
    @classmethod
    def _text(cls, value: str) -> str:
        return _clean(value, multiline=True)

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
                fields=list(fields),
            ) from None

    def contact(self) -> audit.Contact:
        """The contact fields to store."""
        return audit.Contact(name=self.name, email=self.email, affiliation=self.affiliation, purpose=self.purpose)

    def fingerprint(self) -> str:
        """A digest of the whole form, to recognise the same acceptance sent twice."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class _Window:
    """Remembers keys for ``seconds``; tells whether a key was seen in that time, and how often."""

    def __init__(self, seconds: float, max_keys: int = 100_000) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self._seen: OrderedDict[object, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: object) -> int | None:
        """None when ``key`` was seen within the window (counting it); else how many times it was
        seen since it was last let through, this one included, and the window starts again."""
        now = time.monotonic()
        with self._lock:
            found = self._seen.get(key)
            if found is not None and now - found[0] < self.seconds:
                self._seen[key] = (found[0], found[1] + 1)
                return None
            repeats = 1 + (found[1] if found is not None else 0)
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return repeats

    def forget(self, key: object) -> None:
        with self._lock:
            self._seen.pop(key, None)


# A refusal is evidence once per caller and reason in this window; the ones in
# between are counted into the next recorded refusal, not written one by one.
REFUSAL_WINDOW_S = 600.0
# The same acceptance sent again this soon is acknowledged without a new row.
REPEAT_ACCEPTANCE_S = 600.0


class Gate:
    """Records consent and decides, on the server, who may generate with which model.

    The only place the decision is made; the page and the API both call it.
    ``on_withdraw`` hears each identity whose consent was withdrawn, to stop
    its replies in flight.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        terms: Terms,
        identities: Identities,
        *,
        on_withdraw: Callable[[str], object] | None = None,
    ) -> None:
        self.sessions = sessions
        self.terms = terms
        self.identities = identities
        self._sha256 = terms.sha256
        self._on_withdraw = on_withdraw
        self._refusals = _Window(REFUSAL_WINDOW_S)
        self._acceptances = _Window(REPEAT_ACCEPTANCE_S)

    def _meta(self, caller: Caller) -> dict[str, str | None]:
        return {"user_agent": caller.user_agent, "client_hash": caller.client_hash}

    def accept(self, caller: Caller, form: AcceptanceForm) -> str:
        """Record acceptance of the current terms; returns a receipt for an anonymous caller ('' when signed in)."""
        caller, receipt = self.identities.issue(caller, self.terms.id, self._sha256)
        assert caller.identity is not None
        repeat_key = (caller.identity, self._sha256, form.fingerprint())
        if self._acceptances.first(repeat_key) is None and self.has_consent(caller):
            return receipt  # the same acceptance again, moments later: already on record
        try:
            with self.sessions.begin() as session:
                audit.accept(
                    session,
                    identity=caller.identity,
                    terms_id=self.terms.id,
                    terms_sha256=self._sha256,
                    contact=form.contact(),
                    **self._meta(caller),
                )
        except BaseException:
            self._acceptances.forget(repeat_key)
            raise
        return receipt

    # Each write transaction starts with its write (audit.append updates the
    # head row first). Checks run in their own session before it: on SQLite a
    # transaction that reads first cannot wait for the lock when it then writes.

    def withdraw(self, caller: Caller) -> None:
        """Record that ``caller`` withdraws consent; their chat locks and their replies stop at once."""
        if caller.identity is None or not self.has_consent(caller):
            raise InvalidInput("撤回できる同意がありません。", "There is no consent to withdraw.")
        with self.sessions.begin() as session:
            audit.append(session, kind=EventKind.WITHDRAWN, identity=caller.identity, **self._meta(caller))
        if self._on_withdraw is not None:
            self._on_withdraw(caller.identity)

    def acknowledge(self, caller: Caller, spec: ModelSpec) -> None:
        """Record ``caller``'s acknowledgement of ``spec``'s licence, once per identity and licence."""
        self.require_consent(caller)
        assert caller.identity is not None
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
        if caller.identity is None:
            return False
        with self.sessions() as session:
            return audit.has_consent(
                session, identity=caller.identity, terms_id=self.terms.id, terms_sha256=self._sha256
            )

    def has_acknowledged(self, caller: Caller, spec: ModelSpec) -> bool:
        """Whether ``spec``'s licence needs nothing more from ``caller``."""
        if not spec.license.needs_acknowledgement:
            return True
        if caller.identity is None:
            return False
        with self.sessions() as session:
            return audit.has_acknowledged(session, identity=caller.identity, licence=spec.license.name)

    def require_consent(self, caller: Caller) -> None:
        """Raise ``ConsentRequired`` unless ``caller`` accepted the current terms."""
        if not self.has_consent(caller):
            raise ConsentRequired()

    def admit(self, caller: Caller, spec: ModelSpec) -> None:
        """Allow generation with ``spec`` or raise; refusals are recorded (at most one per caller and window)."""
        if not self.has_consent(caller):
            self._refused(caller, spec, "no_consent")
            raise ConsentRequired()
        if not self.has_acknowledged(caller, spec):
            self._refused(caller, spec, "licence_not_acknowledged")
            raise LicenceNotAcknowledged(spec.label, spec.license.name)

    def _refused(self, caller: Caller, spec: ModelSpec, reason: str) -> None:
        repeats = self._refusals.first((caller.limit_key, reason))
        if repeats is None:
            return  # already on record in this window; counted into the next one
        with self.sessions.begin() as session:
            audit.append(
                session,
                kind=EventKind.REFUSED,
                # Refused callers often have no identity yet: their address hash stands for them.
                identity=caller.identity or "anon:-",
                model_id=spec.id,
                reason=reason,
                **self._meta(caller),
            )
