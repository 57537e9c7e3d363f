"""The audit log, as SQLAlchemy 2 typed models.

Every consent-related fact is an ``Event``. Events are append-only and each
carries the SHA-256 of its own content and of the event before it, so an
edited, deleted or reordered row breaks the chain (``python -m db verify``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

GENESIS = "0" * 64


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
    name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(String(320))
    affiliation: Mapped[str | None] = mapped_column(Text)
    purpose: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    client_hash: Mapped[str | None] = mapped_column(String(64))
    """Salted hash of the client address; the address itself is never stored."""
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    HASHED = (
        "seq", "kind", "identity", "created_at", "terms_id", "terms_sha256", "licence", "model_id", "reason",
        "name", "email", "affiliation", "purpose", "user_agent", "client_hash", "prev_hash",
    )  # fmt: skip

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of every field but ``hash`` itself."""
        fields = {name: getattr(self, name) for name in self.HASHED}
        fields["created_at"] = self.created_at.astimezone(UTC).isoformat(timespec="microseconds")
        canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class AuditHead(Base):
    """The single row holding the last event's number and hash.

    Appending updates it first, which serialises writers on every backend, and
    it lets ``verify`` notice events removed from the end of the log.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
