"""Visitors' ratings of replies: their own table, outside the consent chain.

A rating keeps the model and the sampling that produced the reply. The
conversation itself is kept only when the visitor ticked the box allowing it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from db.export import csv_text
from db.models import Base, UTCDateTime

MAX_COMMENT_CHARS = 2000


class Rating(StrEnum):
    UP = "up"
    DOWN = "down"


class Feedback(Base):
    """One rating of one reply."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    rating: Mapped[str] = mapped_column(String(8), nullable=False)
    model_id: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    revision: Mapped[str | None] = mapped_column(String(100))
    sampling: Mapped[str] = mapped_column(Text, nullable=False)
    """The sampling options as JSON."""
    comment: Mapped[str | None] = mapped_column(Text)
    conversation: Mapped[str | None] = mapped_column(Text)
    """The conversation up to the rated reply, as JSON; only when the visitor allowed sharing it."""


def record(
    session: Session,
    *,
    rating: Rating,
    model_id: str,
    revision: str | None,
    sampling: dict[str, Any],
    comment: str = "",
    conversation: list[dict[str, str]] | None = None,
) -> Feedback:
    """Add one rating; the caller owns the transaction."""
    row = Feedback(
        created_at=datetime.now(UTC),
        rating=Rating(rating).value,
        model_id=model_id,
        revision=revision,
        sampling=json.dumps(sampling, ensure_ascii=False, sort_keys=True),
        comment=comment.strip()[:MAX_COMMENT_CHARS] or None,
        conversation=json.dumps(conversation, ensure_ascii=False) if conversation is not None else None,
    )
    session.add(row)
    session.flush()
    return row


def annotate(session: Session, feedback_id: int, *, comment: str, conversation: list[dict[str, str]] | None) -> None:
    """Add the visitor's optional comment, and the conversation if they allowed it, to a stored rating."""
    row = session.get(Feedback, feedback_id)
    if row is None:
        raise LookupError(feedback_id)
    row.comment = comment.strip()[:MAX_COMMENT_CHARS] or None
    row.conversation = json.dumps(conversation, ensure_ascii=False) if conversation is not None else None


def counts(session: Session) -> list[dict[str, Any]]:
    """Ratings per model: ``{"model_id", "up", "down"}``, most rated first."""
    rows = session.execute(
        select(Feedback.model_id, Feedback.rating, func.count()).group_by(Feedback.model_id, Feedback.rating)
    )
    table: dict[str, dict[str, Any]] = {}
    for model_id, rating, n in rows:
        table.setdefault(model_id, {"model_id": model_id, "up": 0, "down": 0})[rating] = n
    return sorted(table.values(), key=lambda r: (-(r["up"] + r["down"]), r["model_id"]))


EXPORT_COLUMNS = ["id", "created_at", "rating", "model_id", "revision", "sampling", "comment", "conversation"]


def rows(session: Session) -> list[dict[str, Any]]:
    """Every rating, oldest first, as plain values."""
    return [
        {
            "id": f.id,
            "created_at": f.created_at.isoformat(timespec="seconds"),
            "rating": f.rating,
            "model_id": f.model_id,
            "revision": f.revision or "",
            "sampling": f.sampling,
            "comment": f.comment or "",
            "conversation": f.conversation or "",
        }
        for f in session.scalars(select(Feedback).order_by(Feedback.id))
    ]


def to_csv(values: list[dict[str, Any]]) -> str:
    """CSV text; cells a spreadsheet would run as formulas are kept as text."""
    return csv_text(EXPORT_COLUMNS, values)
