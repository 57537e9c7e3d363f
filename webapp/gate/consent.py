"""Who the caller is, what they accepted, and the gate on generation."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.engine import DatabaseUnavailable, checkpoint, recover
from db.models import EventKind
from inference import InvalidInput, ModelSpec
from webapp.errors import AuditUnavailable, ConsentRequired, InvalidForm, LicenceNotAcknowledged
from webapp.gate.identity import Caller, Identities
from webapp.gate.terms import Terms
from webapp.text import BIDI_CONTROLS, encodable, visible

log = logging.getLogger(__name__)
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
# With a retention period, old contact fields are erased at start-up and then at most this often.
RETENTION_SWEEP_S = 3600.0
_DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable, OSError)


class _Meta(TypedDict):
    """What every event records about the caller beyond their identity."""

    client_hash: str | None


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
        retention_days: int | None = None,
    ) -> None:
        self.sessions = sessions
        self.terms = terms
        self.identities = identities
        self._sha256 = terms.sha256
        self._on_withdraw = on_withdraw
        self._refusals = _Window(REFUSAL_WINDOW_S)
        self._acceptances = _Window(REPEAT_ACCEPTANCE_S)
        # Withdrawals not (yet) recorded: they lock the chat in this process all the same.
        self._withdrawn: set[str] = set()
        self._withdrawn_lock = threading.Lock()
        self.retention_days = retention_days
        self._swept = float("-inf")

    @contextmanager
    def _database(self, what: str, *, withdrawal: bool = False) -> Iterator[None]:
        """Turn any database failure into ``AuditUnavailable``: fail closed, and start afresh next time."""
        try:
            yield
        except _DB_ERRORS as exc:
            # The kind and the driver's first line only: parameters (contact fields) never reach the log.
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0:1]
            log.error("audit database unavailable while %s: %s %s", what, type(exc).__name__, "".join(reason))
            recover(self.sessions.kw["bind"])
            raise AuditUnavailable(withdrawal=withdrawal) from None

    def sweep(self) -> int:
        """Erase contact fields older than the retention period (when one is set); returns how many."""
        if self.retention_days is None:
            return 0
        self._swept = time.monotonic()
        with self._database("erasing expired contact fields"), self.sessions.begin() as session:
            count = audit.erase_older(session, days=self.retention_days)
        if count:
            checkpoint(self.sessions.kw["bind"])
            log.info("retention: erased %d contact record(s) older than %d days", count, self.retention_days)
        return count

    def _meta(self, caller: Caller) -> _Meta:
        # The user agent is kept only with the (erasable) contact fields of an acceptance.
        return {"client_hash": caller.client_hash}

    def accept(self, caller: Caller, form: AcceptanceForm) -> str:
        """Record acceptance of the current terms; returns a receipt for an anonymous caller ('' when signed in)."""
        caller, receipt = self.identities.issue(caller, self.terms.id, self._sha256)
        assert caller.identity is not None
        repeat_key = (caller.identity, self._sha256, form.fingerprint())
        if self._acceptances.first(repeat_key) is None and self.has_consent(caller):
            return receipt  # the same acceptance again, moments later: already on record
        try:
            with self._database("recording an acceptance"), self.sessions.begin() as session:
                audit.accept(
                    session,
                    identity=caller.identity,
                    terms_id=self.terms.id,
                    terms_sha256=self._sha256,
                    contact=form.contact(),
                    user_agent=caller.user_agent,
                    **self._meta(caller),
                )
        except BaseException:
            self._acceptances.forget(repeat_key)
            raise
        with self._withdrawn_lock:
            self._withdrawn.discard(caller.identity)
        if time.monotonic() - self._swept > RETENTION_SWEEP_S:
            try:
                self.sweep()
            except AuditUnavailable:
                # The acceptance is recorded; the sweep is logged and tried again on a later one.
                self._swept = float("-inf")
        return receipt

    # Each write transaction starts with its write (audit.append updates the
    # head row first). Checks run in their own session before it: on SQLite a
    # transaction that reads first cannot wait for the lock when it then writes.

    def withdraw(self, caller: Caller) -> None:
        """Record that ``caller`` withdraws consent; their chat locks and their replies stop at once."""
        if caller.identity is None:
            raise InvalidInput("撤回できる同意がありません。", "There is no consent to withdraw.")
        try:
            # A withdrawal locked here earlier but not yet recorded is recorded now.
            held = caller.identity in self._withdrawn or self.has_consent(caller)
        except AuditUnavailable:
            held = True  # unknown: lock all the same, and try to record it
        if not held:
            raise InvalidInput("撤回できる同意がありません。", "There is no consent to withdraw.")
        # Locked here first, so a withdrawal that cannot be recorded still takes effect in this process.
        with self._withdrawn_lock:
            self._withdrawn.add(caller.identity)
        if self._on_withdraw is not None:
            self._on_withdraw(caller.identity)
        with self._database("recording a withdrawal", withdrawal=True), self.sessions.begin() as session:
            audit.append(session, kind=EventKind.WITHDRAWN, identity=caller.identity, **self._meta(caller))
        with self._withdrawn_lock:
            self._withdrawn.discard(caller.identity)  # on the record now: the log itself keeps it locked

    def acknowledge(self, caller: Caller, spec: ModelSpec) -> None:
        """Record ``caller``'s acknowledgement of ``spec``'s licence, once per identity and licence."""
        self.require_consent(caller)
        assert caller.identity is not None
        licence = spec.license.name
        if not self.has_acknowledged(caller, spec):
            with self._database("recording an acknowledgement"), self.sessions.begin() as session:
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
        if caller.identity is None or caller.identity in self._withdrawn:
            return False
        with self._database("reading consent"), self.sessions() as session:
            return audit.has_consent(
                session, identity=caller.identity, terms_id=self.terms.id, terms_sha256=self._sha256
            )

    def accepted_at(self, caller: Caller) -> datetime | None:
        """When ``caller`` accepted the current terms, or None when they hold no such acceptance."""
        if caller.identity is None or caller.identity in self._withdrawn:
            return None
        with self._database("reading consent"), self.sessions() as session:
            return audit.accepted_at(
                session, identity=caller.identity, terms_id=self.terms.id, terms_sha256=self._sha256
            )

    def has_acknowledged(self, caller: Caller, spec: ModelSpec) -> bool:
        """Whether ``spec``'s licence needs nothing more from ``caller``."""
        if not spec.license.needs_acknowledgement:
            return True
        if caller.identity is None:
            return False
        with self._database("reading acknowledgements"), self.sessions() as session:
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
        with self._database("recording a refusal"), self.sessions.begin() as session:
            audit.append(
                session,
                kind=EventKind.REFUSED,
                repeats=repeats,
                # Refused callers often have no identity yet: their address hash stands for them.
                identity=caller.identity or "anon:-",
                model_id=spec.id,
                reason=reason,
                **self._meta(caller),
            )
