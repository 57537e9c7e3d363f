"""A keyed chain, contact fields apart from the evidence, and refusal counts.

Revision 0002 chained events with plain SHA-256, which anyone able to write to
the database can recompute. This revision:

1. checks the 0002 chain and refuses to go on if it is broken (a broken log
   must be looked at, not re-sealed);
2. moves the contact fields (name, email, affiliation, purpose, user agent)
   out of ``events`` into the erasable ``contacts`` table, leaving in each
   event a salted SHA-256 commitment to them;
3. re-signs every event with HMAC-SHA256 under the audit key, and appends a
   ``rechained`` event naming the old SHA-256 head, so a head noted before the
   upgrade can still be matched to this log.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models
from db.chain import CONTACT_FIELDS, GENESIS, LEGACY_FIELDS, Keyring, commitment, iso, legacy_hash, new_salt

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DROP_GUARDS = {
    "sqlite": ["DROP TRIGGER IF EXISTS events_no_update", "DROP TRIGGER IF EXISTS events_no_delete"],
    "postgresql": [
        "DROP TRIGGER IF EXISTS events_no_change ON events",
        "DROP TRIGGER IF EXISTS events_no_truncate ON events",
    ],
}
_GUARDS = {
    "sqlite": [
        """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
           BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
        """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
           BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
        # Contact rows may be erased (deleted) but never rewritten.
        """CREATE TRIGGER contacts_no_update BEFORE UPDATE ON contacts
           BEGIN SELECT RAISE(ABORT, 'contact records are erased, never changed'); END""",
    ],
    "postgresql": [
        """CREATE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON events
           FOR EACH ROW EXECUTE FUNCTION events_append_only()""",
        "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events EXECUTE FUNCTION events_append_only()",
        """CREATE FUNCTION contacts_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'contact records are erased, never changed'; END $$""",
        """CREATE TRIGGER contacts_no_update BEFORE UPDATE ON contacts
           FOR EACH ROW EXECUTE FUNCTION contacts_no_update()""",
    ],
}


def _keys() -> Keyring:
    config = op.get_context().config
    keys = None if config is None else config.attributes.get("audit_keys")
    if keys is None:
        from db.engine import default_keyring

        keys = default_keyring()
    return keys


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    legacy = sa.table("events", *(sa.column(n) for n in LEGACY_FIELDS if n != "created_at"),
                      sa.column("created_at", db.models.UTCDateTime()), sa.column("hash"))  # fmt: skip
    old = [dict(r) for r in bind.execute(sa.select(legacy).order_by(legacy.c.seq)).mappings()]
    head = bind.execute(sa.text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    prev = GENESIS
    for n, row in enumerate(old, start=1):
        fields = {k: row[k] for k in LEGACY_FIELDS} | {"created_at": iso(row["created_at"])}
        if row["seq"] != n or row["prev_hash"] != prev or legacy_hash(fields) != row["hash"]:
            raise RuntimeError(f"the audit log does not verify at event {n}: not re-sealing a broken log")
        prev = row["hash"]
    if (head.seq, head.hash) != (len(old), prev):
        raise RuntimeError("the audit log's head does not match its events: not re-sealing a broken log")

    for statement in _DROP_GUARDS.get(dialect, []):
        op.execute(statement)
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("contact_commitment", sa.String(64)))
        batch.add_column(sa.Column("repeats", sa.Integer()))
        batch.add_column(sa.Column("detail", sa.String(300)))
        batch.add_column(sa.Column("key_id", sa.String(16)))
        for name in CONTACT_FIELDS:
            batch.drop_column(name)
    op.create_table(
        "contacts",
        sa.Column("seq", sa.Integer(), sa.ForeignKey("events.seq"), primary_key=True),
        sa.Column("identity", sa.String(200), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("name", sa.Text()),
        sa.Column("email", sa.String(320)),
        sa.Column("affiliation", sa.Text()),
        sa.Column("purpose", sa.Text()),
        sa.Column("user_agent", sa.Text()),
    )
    op.create_index("ix_contacts_identity", "contacts", ["identity"])
    op.create_index("ix_contacts_created_at", "contacts", ["created_at"])

    keys = _keys()
    kid = keys.current_id
    events = sa.table("events", sa.column("seq"), sa.column("contact_commitment"), sa.column("key_id"),
                      sa.column("prev_hash"), sa.column("hash"))  # fmt: skip
    contacts = sa.table("contacts", sa.column("seq"), sa.column("identity"),
                        sa.column("created_at", db.models.UTCDateTime()), sa.column("salt"),
                        *(sa.column(n) for n in CONTACT_FIELDS))  # fmt: skip
    prev = GENESIS
    for row in old:
        contact = {n: row[n] for n in CONTACT_FIELDS}
        promise = None
        if any(v is not None for v in contact.values()):
            salt = new_salt()
            promise = commitment(salt, contact)
            bind.execute(sa.insert(contacts).values(seq=row["seq"], identity=row["identity"],
                                                    created_at=row["created_at"], salt=salt, **contact))  # fmt: skip
        fields = {k: row[k] for k in LEGACY_FIELDS if k not in CONTACT_FIELDS}
        fields |= {"created_at": iso(row["created_at"]), "contact_commitment": promise, "detail": None,
                   "key_id": kid, "prev_hash": prev}  # fmt: skip
        digest = keys.sign(kid, fields)
        assert digest is not None, "the keyring's current key always signs"
        bind.execute(sa.update(events).where(events.c.seq == row["seq"])
                     .values(contact_commitment=promise, key_id=kid, prev_hash=prev, hash=digest))  # fmt: skip
        prev = digest
    seq = len(old)
    if old:
        from datetime import UTC, datetime

        seq += 1
        at = datetime.now(UTC)
        detail = f"sha256 head {len(old)} {head.hash}"
        fields = dict.fromkeys(LEGACY_FIELDS) | {"seq": seq, "kind": "rechained", "identity": "system:migration",
                                                  "created_at": iso(at), "detail": detail, "key_id": kid,
                                                  "contact_commitment": None, "prev_hash": prev}  # fmt: skip
        for name in CONTACT_FIELDS:
            fields.pop(name)
        digest = keys.sign(kid, fields)
        assert digest is not None, "the keyring's current key always signs"
        full = sa.table("events", *(sa.column(n) for n in fields if n != "created_at"),
                        sa.column("created_at", db.models.UTCDateTime()), sa.column("hash"))  # fmt: skip
        bind.execute(sa.insert(full).values(**(fields | {"created_at": at, "hash": digest})))
        prev = digest
    bind.execute(sa.text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"), {"seq": seq, "hash": prev})
    for statement in _GUARDS.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the keyed chain is not downgraded: its events cannot be turned back")
