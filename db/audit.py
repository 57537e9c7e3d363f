"""Appending to, querying and verifying the audit log. The caller owns the session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import GENESIS, AuditHead, Event, EventKind

_CONSENT_KINDS = (EventKind.ACCEPTED, EventKind.WITHDRAWN)


@dataclass(frozen=True, kw_only=True)
class Contact:
    """What the acceptance form asks for, already validated."""

    name: str
    email: str
    affiliation: str
    purpose: str


def append(
    session: Session, *, kind: EventKind, identity: str, now: datetime | None = None, **fields: str | None
) -> Event:
    """Add one event at the end of the chain.

    The head row is updated first: that takes the write lock (SQLite) or the
    row lock (PostgreSQL) before anything is read, so concurrent writers queue
    and each sees the previous writer's head.
    """
    head = session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq + 1)
        .returning(AuditHead.seq, AuditHead.hash)
    ).one()
    event = Event(
        seq=head.seq,
        kind=kind.value,
        identity=identity,
        created_at=now or datetime.now(UTC),
        prev_hash=head.hash,
        **fields,
    )
    event.hash = event.content_hash()
    session.add(event)
    session.flush()
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=event.hash))
    return event


def accept(
    session: Session, *, identity: str, terms_id: str, terms_sha256: str, contact: Contact, **meta: str | None
) -> Event:
    """Record that ``identity`` accepted this exact version of the terms."""
    return append(
        session,
        kind=EventKind.ACCEPTED,
        identity=identity,
        terms_id=terms_id,
        terms_sha256=terms_sha256,
        name=contact.name,
        email=contact.email,
        affiliation=contact.affiliation,
        purpose=contact.purpose,
        **meta,
    )


def has_consent(session: Session, *, identity: str, terms_id: str, terms_sha256: str) -> bool:
    """Whether ``identity``'s latest consent event accepts exactly these terms (and was not withdrawn)."""
    latest = session.execute(
        select(Event.kind, Event.terms_id, Event.terms_sha256)
        .where(Event.identity == identity, Event.kind.in_([k.value for k in _CONSENT_KINDS]))
        .order_by(Event.seq.desc())
        .limit(1)
    ).first()
    return latest is not None and tuple(latest) == (EventKind.ACCEPTED.value, terms_id, terms_sha256)


def has_acknowledged(session: Session, *, identity: str, licence: str) -> bool:
    """Whether ``identity`` has acknowledged ``licence``'s terms."""
    found = session.scalar(
        select(Event.seq)
        .where(
            Event.identity == identity,
            Event.kind == EventKind.LICENCE_ACKNOWLEDGED.value,
            Event.licence == licence,
        )
        .limit(1)
    )
    return found is not None


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking the chain: ``bad_seq`` is the first bad event, if any."""

    events: int
    head: str
    bad_seq: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        """True when every event and the head are intact."""
        return self.bad_seq is None


def verify(session: Session) -> Verdict:
    """Check every event's hash, the links between them, their numbering and the head."""
    prev, expected, last = GENESIS, 1, None
    rows = session.execute(select(Event).order_by(Event.seq).execution_options(yield_per=1000)).scalars()
    for event in rows:
        if event.seq != expected:
            return Verdict(expected - 1, prev, expected, f"event {expected} is missing (the next one is {event.seq})")
        if event.content_hash() != event.hash:
            return Verdict(expected - 1, prev, event.seq, f"event {event.seq} was altered (its hash does not match)")
        if event.prev_hash != prev:
            return Verdict(expected - 1, prev, event.seq, f"event {event.seq} does not follow event {event.seq - 1}")
        prev, expected, last = event.hash, expected + 1, event
    count = expected - 1
    head = session.get(AuditHead, 1)
    if head is None:
        return Verdict(count, prev, count + 1, "the log's head record is missing")
    if head.seq != count or head.hash != prev:
        bad = count + 1 if head.seq > count else (last.seq if last else 1)
        return Verdict(count, prev, bad, f"the head records {head.seq} events but the log holds {count}")
    return Verdict(count, prev)


def latest(session: Session, limit: int = 50) -> list[Event]:
    """The most recent events, newest first."""
    return list(session.scalars(select(Event).order_by(Event.seq.desc()).limit(limit)))


REPORT_COLUMNS = (
    "identity", "name", "email", "affiliation", "purpose", "terms_id", "terms_sha256", "accepted_at", "status",
    "withdrawn_at",
)  # fmt: skip


def access_report(session: Session, *, since: datetime | None = None) -> list[dict[str, str]]:
    """One row per acceptance, like the hub's access report: who, what, when, and whether it still holds."""
    withdrawn: dict[str, list[datetime]] = {}
    for identity, at in session.execute(
        select(Event.identity, Event.created_at).where(Event.kind == EventKind.WITHDRAWN.value).order_by(Event.seq)
    ):
        withdrawn.setdefault(identity, []).append(at)
    report = []
    query = select(Event).where(Event.kind == EventKind.ACCEPTED.value).order_by(Event.seq)
    if since is not None:
        query = query.where(Event.created_at >= since)
    for event in session.scalars(query):
        later = [at for at in withdrawn.get(event.identity, []) if at >= event.created_at]
        report.append(
            {
                "identity": event.identity,
                "name": event.name or "",
                "email": event.email or "",
                "affiliation": event.affiliation or "",
                "purpose": event.purpose or "",
                "terms_id": event.terms_id or "",
                "terms_sha256": event.terms_sha256 or "",
                "accepted_at": event.created_at.isoformat(),
                "status": "withdrawn" if later else "accepted",
                "withdrawn_at": later[0].isoformat() if later else "",
            }
        )
    return report
