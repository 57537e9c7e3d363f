"""Recording and checking acceptances. The caller owns the session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Acceptance


@dataclass(frozen=True, kw_only=True)
class Contact:
    """What the acceptance form asks for, already validated."""

    name: str
    email: str
    affiliation: str
    purpose: str


def record(
    session: Session,
    *,
    identity: str,
    terms_id: str,
    terms_sha256: str,
    contact: Contact,
    user_agent: str | None,
    now: datetime | None = None,
) -> Acceptance:
    """Add one acceptance row to ``session``."""
    row = Acceptance(
        identity=identity,
        terms_id=terms_id,
        terms_sha256=terms_sha256,
        name=contact.name,
        email=contact.email,
        affiliation=contact.affiliation,
        purpose=contact.purpose,
        accepted_at=now or datetime.now(UTC),
        user_agent=user_agent,
    )
    session.add(row)
    return row


def has_accepted(session: Session, *, identity: str, terms_id: str, terms_sha256: str) -> bool:
    """Whether ``identity`` has accepted exactly this version of the terms."""
    found = session.scalar(
        select(Acceptance.id)
        .where(
            Acceptance.identity == identity,
            Acceptance.terms_id == terms_id,
            Acceptance.terms_sha256 == terms_sha256,
        )
        .limit(1)
    )
    return found is not None
