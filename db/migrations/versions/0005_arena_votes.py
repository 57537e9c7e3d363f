"""Votes of the compare mode, in their own table outside the audit chain.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arena_votes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("model_a", sa.String(200), nullable=False),
        sa.Column("model_b", sa.String(200), nullable=False),
        sa.Column("revision_a", sa.String(100)),
        sa.Column("revision_b", sa.String(100)),
        sa.Column("sampling", sa.Text(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("blind", sa.Boolean(), nullable=False),
        sa.Column("conversation", sa.Text()),
    )
    op.create_index("ix_arena_votes_model_a", "arena_votes", ["model_a"])
    op.create_index("ix_arena_votes_model_b", "arena_votes", ["model_b"])


def downgrade() -> None:
    op.drop_index("ix_arena_votes_model_b", table_name="arena_votes")
    op.drop_index("ix_arena_votes_model_a", table_name="arena_votes")
    op.drop_table("arena_votes")
