"""Appending to, querying, erasing and verifying the audit log. The caller owns the session.

The audit key travels with the session (``session.info["audit_keys"]``, set by
``db.engine.session_factory``), so callers pass only what happened.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db import kept
from db.chain import GENESIS, Anchor, Keyring, commitment, iso, new_salt
from db.models import AuditHead, Event, EventKind
from db.models import Contact as ContactRow

_CONSENT_KINDS = (EventKind.ACCEPTED, EventKind.WITHDRAWN)
RETENTION_IDENTITY = "system:retention"
ERASED = "(消去済み / erased)"


@dataclass(frozen=True, kw_only=True)
class Contact:
    """What the acceptance form asks for, already validated."""

    name: str
    email: str
    affiliation: str
    purpose: str


def keys_of(session: Session) -> Keyring:
    """The audit keyring the session was made with."""
    keys = session.info.get("audit_keys")
    if not isinstance(keys, Keyring):
        raise RuntimeError("this session has no audit key: make it with db.engine.session_factory(engine, keys)")
    return keys


def append(
    session: Session,
    *,
    kind: EventKind,
    identity: str,
    now: datetime | None = None,
    contact: dict[str, str | None] | None = None,
    repeats: int | None = None,
    **fields: str | None,
) -> Event:
    """Add one event at the end of the chain; ``contact`` goes to the erasable table, committed to by salt.

    The head row is updated first: that takes the write lock (SQLite) or the
    row lock (PostgreSQL) before anything is read, so concurrent writers queue
    and each sees the previous writer's head.
    """
    keys = keys_of(session)
    head = session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq + 1)
        .returning(AuditHead.seq, AuditHead.hash)
    ).one()
    at = now or datetime.now(UTC)
    salt = new_salt() if contact is not None else None
    event = Event(
        seq=head.seq,
        kind=kind.value,
        identity=identity,
        created_at=at,
        prev_hash=head.hash,
        key_id=keys.current_id,
        repeats=repeats,
        contact_commitment=commitment(salt, contact) if salt and contact is not None else None,
        **fields,
    )
    event.hash = str(keys.sign(event.key_id, event.hashed_fields()))
    session.add(event)
    session.flush()
    if salt and contact is not None:
        session.add(ContactRow(seq=event.seq, identity=identity, created_at=at, salt=salt, **contact))
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=event.hash))
    session.flush()
    return event


def accept(
    session: Session,
    *,
    identity: str,
    terms_id: str,
    terms_sha256: str,
    contact: Contact,
    user_agent: str | None = None,
    client_hash: str | None = None,
) -> Event:
    """Record that ``identity`` accepted this exact version of the terms."""
    return append(
        session,
        kind=EventKind.ACCEPTED,
        identity=identity,
        terms_id=terms_id,
        terms_sha256=terms_sha256,
        contact=asdict(contact) | {"user_agent": user_agent},
        client_hash=client_hash,
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


def accepted_at(session: Session, *, identity: str, terms_id: str, terms_sha256: str) -> datetime | None:
    """When ``identity`` accepted these terms, if that acceptance is their latest consent event."""
    latest = session.execute(
        select(Event.kind, Event.terms_id, Event.terms_sha256, Event.created_at)
        .where(Event.identity == identity, Event.kind.in_([k.value for k in _CONSENT_KINDS]))
        .order_by(Event.seq.desc())
        .limit(1)
    ).first()
    if latest is None or tuple(latest[:3]) != (EventKind.ACCEPTED.value, terms_id, terms_sha256):
        return None
    return latest[3]


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


# -- erasure and retention -----------------------------------------------------------------


@dataclass(frozen=True)
class Erasure:
    """What one erasure removed: contact forms, and the conversations the account kept on the server."""

    contacts: int = 0
    conversations: int | None = None
    """None when the account kept none on the server (no opt-in), else how many its list held."""

    def __bool__(self) -> bool:
        return bool(self.contacts) or self.conversations is not None

    def detail(self) -> str:
        """The event's words for it (never the contents)."""
        kept_part = f", {self.conversations} kept conversation(s)" if self.conversations is not None else ""
        return f"{self.contacts} contact record(s){kept_part}"


def erase_person(session: Session, *, identity: str, by: str = "request", now: datetime | None = None) -> Erasure:
    """Erase every stored contact field of ``identity`` and the conversations it kept on the server, and
    record it (one ``erased`` event). The events stay (with their commitments), so the chain still
    verifies. Nothing is recorded when there was nothing to erase."""
    # The head update inside ``append`` comes first: it takes the write lock before the delete reads.
    found = session.scalars(select(ContactRow.seq).where(ContactRow.identity == identity)).all()
    erasure = Erasure(len(found), kept.count_of(session, identity))
    if not erasure:
        return erasure
    append(session, kind=EventKind.ERASED, identity=identity, now=now, reason=by[:64], detail=erasure.detail())
    session.execute(delete(ContactRow).where(ContactRow.identity == identity))
    kept.remove(session, identity)
    return erasure


def erase(session: Session, *, identity: str, by: str = "request", now: datetime | None = None) -> int:
    """``erase_person``; returns how many contact forms were erased."""
    return erase_person(session, identity=identity, by=by, now=now).contacts


def erase_older(session: Session, *, days: int, now: datetime | None = None) -> int:
    """Retention: erase contact fields stored more than ``days`` days ago; returns how many."""
    at = now or datetime.now(UTC)
    cutoff = at - timedelta(days=days)
    count = session.scalar(select(func.count()).select_from(ContactRow).where(ContactRow.created_at < cutoff))
    if not count:
        return 0
    append(session, kind=EventKind.ERASED, identity=RETENTION_IDENTITY, now=at, reason="retention",
           detail=f"before {iso(cutoff)}")  # fmt: skip
    session.execute(delete(ContactRow).where(ContactRow.created_at < cutoff))
    return int(count)


def admin_access(session: Session, *, who: str, action: str) -> Event:
    """Record that administrator ``who`` viewed or exported the log (``action`` says what)."""
    return append(session, kind=EventKind.ADMIN_ACCESS, identity=who, detail=action[:300])


# -- verification ---------------------------------------------------------------------------


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


def _snapshot(session: Session) -> None:
    """Make every read below see one state of the log, however many writers are appending."""
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        # pysqlite opens no transaction for reads; SQLite's own BEGIN pins a WAL snapshot at the first read.
        conn.exec_driver_sql("BEGIN")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def verify(session: Session, *, anchor: Anchor | None = None) -> Verdict:
    """Check every event's HMAC, the links between them, their numbering, the head and the contact commitments.

    Call it on a fresh session: it reads the head first and the events up to
    it, in one snapshot. With ``anchor`` it also checks that the log still
    holds the anchored event unchanged.
    """
    keys = keys_of(session)
    _snapshot(session)
    head = session.get(AuditHead, 1)
    if head is None:
        return Verdict(0, GENESIS, 1, "the log's head record is missing")
    prev, expected, last = GENESIS, 1, None
    missing: list[Event] = []
    erased_by: dict[str, int] = {}
    retention: list[tuple[int, datetime]] = []
    rows = session.execute(
        select(Event).where(Event.seq <= head.seq).order_by(Event.seq).execution_options(yield_per=1000)
    ).scalars()
    for event in rows:
        bad = _check(event, expected, prev, keys)
        if bad:
            return Verdict(expected - 1, prev, event.seq if event.seq == expected else expected, bad)
        if event.contact_commitment is not None:
            if event.contact is None:
                missing.append(event)
            elif commitment(event.contact.salt, _contact_dict(event.contact)) != event.contact_commitment:
                return Verdict(expected - 1, prev, event.seq, f"event {event.seq}'s contact fields were altered")
        if event.kind == EventKind.ERASED.value:
            if event.identity == RETENTION_IDENTITY and event.detail and event.detail.startswith("before "):
                retention.append((event.seq, datetime.fromisoformat(event.detail[7:])))
            else:
                erased_by[event.identity] = event.seq
        prev, expected, last = event.hash, expected + 1, event
    count = expected - 1
    if head.seq != count or head.hash != prev:
        bad_seq = count + 1 if head.seq > count else (last.seq if last else 1)
        return Verdict(count, prev, bad_seq, f"the head records {head.seq} events but the log holds {count}")
    beyond = session.scalar(select(func.count()).select_from(Event).where(Event.seq > head.seq))
    if beyond:
        return Verdict(count, prev, count + 1, f"{beyond} event(s) lie beyond the head at {head.seq}")
    for event in missing:
        if erased_by.get(event.identity, 0) <= event.seq and not any(
            seq > event.seq and cutoff > event.created_at for seq, cutoff in retention
        ):
            return Verdict(count, prev, event.seq, f"event {event.seq}'s contact fields are gone with no erasure")
    if anchor is not None:
        anchored = GENESIS if anchor.seq == 0 else getattr(session.get(Event, anchor.seq), "hash", None)
        if anchor.seq > count or anchored != anchor.hash:
            return Verdict(count, prev, min(anchor.seq, count + 1),
                           f"the log no longer extends the anchor at event {anchor.seq}")  # fmt: skip
    return Verdict(count, prev)


def _check(event: Event, expected: int, prev: str, keys: Keyring) -> str:
    if event.seq != expected:
        return f"event {expected} is missing (the next one is {event.seq})"
    signed = keys.sign(event.key_id, event.hashed_fields())
    if signed is None:
        return f"event {event.seq} names audit key {event.key_id}, which is not configured (or was forged)"
    if signed != event.hash:
        return f"event {event.seq} was altered (its hash does not match)"
    if event.prev_hash != prev:
        return f"event {event.seq} does not follow event {event.seq - 1}"
    return ""


def head_anchor(session: Session) -> Anchor:
    """The current head, for ``python -m db head``."""
    head = session.get(AuditHead, 1)
    if head is None:
        raise LookupError("the log's head record is missing")
    return Anchor(head.seq, head.hash, datetime.now(UTC))


# -- what administrators read ------------------------------------------------------------------


def _contact_dict(row: ContactRow) -> dict[str, str | None]:
    return {"name": row.name, "email": row.email, "affiliation": row.affiliation, "purpose": row.purpose,
            "user_agent": row.user_agent}  # fmt: skip


def contact_of(event: Event) -> dict[str, str]:
    """The event's contact fields as text; erased ones read ``ERASED``, events without any read ''."""
    if event.contact is not None:
        return {k: v or "" for k, v in _contact_dict(event.contact).items()}
    filler = ERASED if event.contact_commitment else ""
    return dict.fromkeys(("name", "email", "affiliation", "purpose", "user_agent"), filler)


def latest(session: Session, limit: int = 50) -> list[Event]:
    """The most recent events, newest first (with their contact rows loaded)."""
    return list(session.scalars(select(Event).order_by(Event.seq.desc()).limit(limit)))


REPORT_COLUMNS = (
    "identity", "name", "email", "affiliation", "purpose", "terms_id", "terms_sha256", "accepted_at", "status",
    "withdrawn_at", "contact",
)  # fmt: skip


def access_report(session: Session, *, since: datetime | None = None) -> list[dict[str, str]]:
    """One row per acceptance, like the hub's access report: who, what, when, and whether it still holds.

    ``contact`` is ``kept`` or ``erased``; erased rows show no contact fields.
    """
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
        contact = contact_of(event) if event.contact is not None else dict.fromkeys(_REPORTED, "")
        report.append(
            {
                "identity": event.identity,
                **{k: contact[k] for k in _REPORTED},
                "terms_id": event.terms_id or "",
                "terms_sha256": event.terms_sha256 or "",
                "accepted_at": event.created_at.isoformat(),
                "status": "withdrawn" if later else "accepted",
                "withdrawn_at": later[0].isoformat() if later else "",
                "contact": "kept" if event.contact is not None else "erased",
            }
        )
    return report


_REPORTED = ("name", "email", "affiliation", "purpose")
