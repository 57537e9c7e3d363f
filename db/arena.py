"""Votes between two models' replies to the same message (the compare mode), outside the consent chain.

A vote keeps both models, their revisions and the sampling they shared; the
conversation only when the visitor ticked the box allowing it, as ratings do.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from db.export import csv_text
from db.models import Base, UTCDateTime


class Verdict(StrEnum):
    A = "a"
    B = "b"
    TIE = "tie"
    BOTH_BAD = "both_bad"


class Vote(Base):
    """One visitor's verdict on one pair of replies."""

    __tablename__ = "arena_votes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    model_a: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    model_b: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    revision_a: Mapped[str | None] = mapped_column(String(100))
    revision_b: Mapped[str | None] = mapped_column(String(100))
    sampling: Mapped[str] = mapped_column(Text, nullable=False)
    """The sampling options both replies were made with, as JSON."""
    verdict: Mapped[str] = mapped_column(String(16), nullable=False)
    blind: Mapped[bool] = mapped_column(Boolean, nullable=False)
    """The models were drawn at random and named only after the vote."""
    conversation: Mapped[str | None] = mapped_column(Text)
    """Both sides' conversations as JSON; only when the visitor allowed storing them."""


def record(
    session: Session,
    *,
    model_a: str,
    model_b: str,
    revision_a: str | None,
    revision_b: str | None,
    sampling: dict[str, Any],
    verdict: Verdict,
    blind: bool,
    conversation: dict[str, Any] | None = None,
) -> Vote:
    """Add one vote; the caller owns the transaction."""
    row = Vote(
        created_at=datetime.now(UTC),
        model_a=model_a,
        model_b=model_b,
        revision_a=revision_a,
        revision_b=revision_b,
        sampling=json.dumps(sampling, ensure_ascii=False, sort_keys=True),
        verdict=Verdict(verdict).value,
        blind=blind,
        conversation=json.dumps(conversation, ensure_ascii=False) if conversation is not None else None,
    )
    session.add(row)
    session.flush()
    return row


EXPORT_COLUMNS = [
    "id", "created_at", "model_a", "model_b", "revision_a", "revision_b", "sampling", "verdict", "blind",
    "conversation",
]  # fmt: skip


def rows(session: Session) -> list[dict[str, Any]]:
    """Every vote, oldest first, as plain values."""
    return [
        {
            "id": v.id,
            "created_at": v.created_at.isoformat(timespec="seconds"),
            "model_a": v.model_a,
            "model_b": v.model_b,
            "revision_a": v.revision_a or "",
            "revision_b": v.revision_b or "",
            "sampling": v.sampling,
            "verdict": v.verdict,
            "blind": v.blind,
            "conversation": v.conversation or "",
        }
        for v in session.scalars(select(Vote).order_by(Vote.id))
    ]


def to_csv(values: list[dict[str, Any]]) -> str:
    """CSV text; cells a spreadsheet would run as formulas are kept as text."""
    return csv_text(EXPORT_COLUMNS, values)
