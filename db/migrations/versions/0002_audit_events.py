"""Hash-chained audit events replace the acceptances table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models
from db.chain import GENESIS, LEGACY_FIELDS, iso, legacy_hash

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_GUARDS = {
    "sqlite": [
        """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
           BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
        """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
           BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
    ],
    "postgresql": [
        """CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$""",
        """CREATE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON events
           FOR EACH ROW EXECUTE FUNCTION events_append_only()""",
        "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events EXECUTE FUNCTION events_append_only()",
    ],
}


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("identity", sa.String(200), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("terms_id", sa.String(128)),
        sa.Column("terms_sha256", sa.String(64)),
        sa.Column("licence", sa.String(128)),
        sa.Column("model_id", sa.String(128)),
        sa.Column("reason", sa.String(64)),
        sa.Column("name", sa.Text()),
        sa.Column("email", sa.String(320)),
        sa.Column("affiliation", sa.Text()),
        sa.Column("purpose", sa.Text()),
        sa.Column("user_agent", sa.Text()),
        sa.Column("client_hash", sa.String(64)),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_events_identity_seq", "events", ["identity", "seq"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )

    # Carry earlier acceptances over, in their order, into the chain.
    bind = op.get_bind()
    contact = ("identity", "terms_id", "terms_sha256", "name", "email", "affiliation", "purpose", "user_agent")
    acceptances = sa.table(
        "acceptances",
        sa.column("id", sa.Integer()),
        sa.column("accepted_at", db.models.UTCDateTime()),
        *(sa.column(name, sa.Text()) for name in contact),
    )
    prev, seq = GENESIS, 0
    rows = []
    for seq, row in enumerate(bind.execute(sa.select(acceptances).order_by(acceptances.c.id)).mappings(), start=1):
        event = dict.fromkeys(LEGACY_FIELDS) | {name: row[name] for name in contact}
        event |= {"seq": seq, "kind": "accepted", "prev_hash": prev, "created_at": row["accepted_at"]}
        event["hash"] = prev = legacy_hash(event | {"created_at": iso(row["accepted_at"])})
        rows.append(event)
    if rows:
        events = sa.table("events", *(sa.column(n) for n in rows[0] if n != "created_at"),
                          sa.column("created_at", db.models.UTCDateTime()))  # fmt: skip
        bind.execute(sa.insert(events), rows)
    bind.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, :seq, :hash)"), {"seq": seq, "hash": prev})

    dialect = bind.dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER acceptances_no_change ON acceptances")
        op.execute("DROP FUNCTION acceptances_append_only()")
    op.drop_table("acceptances")
    for statement in _GUARDS.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the audit log is not downgraded: events cannot be turned back into acceptances")
