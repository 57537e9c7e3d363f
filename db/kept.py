"""Conversations a signed-in visitor chose to keep on the server, so that they follow across devices.

Off by default: conversations live in the visitor's browser, and the server
holds a row here only for a Hugging Face account (``hf:<username>``) that
opted in. The row is the account's whole list, in the very form the browser
keeps it (checked by the web layer before it gets here), with the same bounds
as the browser's list: at most ``MAX_CHATS`` conversations and
``MAX_CHARS`` characters of JSON. One row per account: the opt-in is the row
itself, so an account with no conversation yet still holds an (empty) row,
and turning the option off, or an erasure, deletes it.

The caller owns the transaction. A change starts with ``lock``, a write, so
that on SQLite the transaction holds the write lock before it reads (a
transaction that reads first cannot wait for the lock when it then writes).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, String, Text, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from db.models import Base, UTCDateTime

MAX_CHATS = 100
"""Conversations per account: as many as the browser keeps."""
MAX_CHARS = 400_000
"""Characters of the account's list as JSON: as many as the browser keeps (one request must carry them)."""
ACCOUNT_PREFIX = "hf:"


class TooMuch(ValueError):
    """A list beyond the bounds, or for an identity that is not a signed-in account; nothing was written."""


class KeptChats(Base):
    """One signed-in account's kept conversations."""

    __tablename__ = "kept_conversations"

    identity: Mapped[str] = mapped_column(String(200), primary_key=True)
    """``hf:<username>``: only signed-in accounts keep conversations here."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    count: Mapped[int] = mapped_column(Integer, nullable=False)
    """How many conversations ``chats`` holds."""
    chats: Mapped[str] = mapped_column(Text, nullable=False)
    """The list as JSON, newest first, exactly as the browser keeps it."""


def _account(identity: str) -> str:
    if not identity.startswith(ACCOUNT_PREFIX) or len(identity) > 200:
        raise TooMuch("conversations are kept on the server only for signed-in accounts")
    return identity


def lock(session: Session, identity: str, *, now: datetime | None = None) -> bool:
    """Take the write lock on ``identity``'s row (touching its time); whether the account opted in."""
    result = session.execute(
        update(KeptChats).where(KeptChats.identity == identity).values(updated_at=now or datetime.now(UTC))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def held(session: Session, identity: str) -> bool:
    """Whether ``identity`` keeps its conversations on the server."""
    return session.scalar(select(KeptChats.identity).where(KeptChats.identity == identity)) is not None


def read(session: Session, identity: str) -> list[dict[str, Any]] | None:
    """``identity``'s kept list as stored, or None when it has not opted in."""
    text = session.scalar(select(KeptChats.chats).where(KeptChats.identity == identity))
    return json.loads(text) if text is not None else None


def write(session: Session, identity: str, chats: list[dict[str, Any]], *, now: datetime | None = None) -> None:
    """Keep ``chats`` as ``identity``'s list (opting in when it has no row); ``TooMuch`` beyond the bounds."""
    text = json.dumps(chats, ensure_ascii=False)
    if len(chats) > MAX_CHATS or len(text) > MAX_CHARS:
        raise TooMuch(f"at most {MAX_CHATS} conversations and {MAX_CHARS} characters, got {len(chats)}, {len(text)}")
    at = now or datetime.now(UTC)
    row = session.get(KeptChats, _account(identity))
    if row is None:
        session.add(KeptChats(identity=identity, updated_at=at, count=len(chats), chats=text))
    else:
        row.updated_at, row.count, row.chats = at, len(chats), text
    session.flush()


def count_of(session: Session, identity: str) -> int | None:
    """How many conversations ``identity`` keeps on the server; None when it has not opted in."""
    return session.scalar(select(KeptChats.count).where(KeptChats.identity == identity))


def remove(session: Session, identity: str) -> int | None:
    """Delete ``identity``'s row (opting out); how many conversations it held, None when it had none."""
    count = count_of(session, identity)
    if count is None:
        return None
    session.execute(delete(KeptChats).where(KeptChats.identity == identity))
    return count
