"""The audit log, as SQLAlchemy 2 typed models.

Every consent-related fact is an ``Event``. Events are append-only and each
carries an HMAC-SHA256, under the audit key (never stored here), of its own
content and of the event before it, so an edited, deleted or reordered row
breaks the chain (``python -m db verify``). Contact details live apart, in
``Contact`` rows that can be erased; events hold only a salted commitment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from db.chain import GENESIS, iso

__all__ = ["GENESIS", "AuditHead", "Base", "Contact", "Event", "EventKind", "UTCDateTime"]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of the project's tables."""


class EventKind(StrEnum):
    """What happened."""

    ACCEPTED = "accepted"
    WITHDRAWN = "withdrawn"
    LICENCE_ACKNOWLEDGED = "licence_acknowledged"
    REFUSED = "refused"
    ERASED = "erased"
    """Contact fields erased: on request (``identity`` is the person) or by retention (``system:retention``)."""
    ADMIN_ACCESS = "admin_access"
    """An administrator viewed or exported the log (``detail`` says what)."""
    RECHAINED = "rechained"
    """The unkeyed chain of revision 0002 was checked and sealed under the audit key (``detail``: its head)."""


class Event(Base):
    """One audit event. Never updated or deleted (the database refuses both)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_identity_seq", "identity", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    """1, 2, 3, … with no gaps: a gap is a deleted event."""
    kind: Mapped[str] = mapped_column(String(32))
    identity: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    terms_id: Mapped[str | None] = mapped_column(String(128))
    terms_sha256: Mapped[str | None] = mapped_column(String(64))
    licence: Mapped[str | None] = mapped_column(String(128))
    model_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(String(64))
    client_hash: Mapped[str | None] = mapped_column(String(64))
    """Salted hash of the client address; the address itself is never stored."""
    contact_commitment: Mapped[str | None] = mapped_column(String(64))
    """Salted SHA-256 of the contact fields (``chain.commitment``); the fields are in ``contacts``."""
    repeats: Mapped[int | None] = mapped_column(Integer)
    """How many refused attempts a ``refused`` event stands for (hashed only when set)."""
    detail: Mapped[str | None] = mapped_column(String(300))
    key_id: Mapped[str] = mapped_column(String(16))
    """Which audit key signed this event (``chain.key_id``), so events signed before a rotation verify."""
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    contact: Mapped[Contact | None] = relationship(lazy="selectin", viewonly=True)

    HASHED = (
        "seq", "kind", "identity", "created_at", "terms_id", "terms_sha256", "licence", "model_id", "reason",
        "client_hash", "contact_commitment", "detail", "key_id", "prev_hash",
    )  # fmt: skip

    def hashed_fields(self) -> dict[str, object]:
        """Everything the chain commits to, as canonical values."""
        fields = {name: getattr(self, name) for name in self.HASHED}
        fields["created_at"] = iso(self.created_at)
        if self.repeats is not None:
            fields["repeats"] = self.repeats
        return fields


class Contact(Base):
    """What the acceptance form asked for, kept apart from the evidence so it can be erased.

    Erasing deletes the row; its event keeps the commitment, which without the
    salt reveals nothing.
    """

    __tablename__ = "contacts"

    seq: Mapped[int] = mapped_column(ForeignKey("events.seq"), primary_key=True)
    identity: Mapped[str] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    salt: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(String(320))
    affiliation: Mapped[str | None] = mapped_column(Text)
    purpose: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)


class AuditHead(Base):
    """The single row holding the last event's number and hash.

    Appending updates it first, which serialises writers on every backend, and
    it lets ``verify`` notice events removed from the end of the log.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
