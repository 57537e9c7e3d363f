"""Acceptances of the terms of use, append-only.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Rows are evidence: the database itself refuses to change or remove them.
_SQLITE_GUARDS = [
    """CREATE TRIGGER acceptances_no_update BEFORE UPDATE ON acceptances
       BEGIN SELECT RAISE(ABORT, 'acceptances are append-only'); END""",
    """CREATE TRIGGER acceptances_no_delete BEFORE DELETE ON acceptances
       BEGIN SELECT RAISE(ABORT, 'acceptances are append-only'); END""",
]
_PG_GUARDS = [
    """CREATE FUNCTION acceptances_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'acceptances are append-only'; END $$""",
    """CREATE TRIGGER acceptances_no_change BEFORE UPDATE OR DELETE ON acceptances
       FOR EACH ROW EXECUTE FUNCTION acceptances_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        "acceptances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("terms_id", sa.String(128), nullable=False),
        sa.Column("terms_sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("affiliation", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("accepted_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=True),
    )
    op.create_index("ix_acceptances_identity_terms", "acceptances", ["identity", "terms_id", "terms_sha256"])
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_GUARDS, "postgresql": _PG_GUARDS}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER acceptances_no_change ON acceptances")
        op.execute("DROP FUNCTION acceptances_append_only()")
    op.drop_table("acceptances")
