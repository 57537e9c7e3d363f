"""Ratings of replies, in their own table outside the audit chain.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("revision", sa.String(100)),
        sa.Column("sampling", sa.Text(), nullable=False),
        sa.Column("comment", sa.Text()),
        sa.Column("conversation", sa.Text()),
    )
    op.create_index("ix_feedback_model_id", "feedback", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_model_id", table_name="feedback")
    op.drop_table("feedback")
