"""Conversations a signed-in visitor chose to keep on the server (one row per account), outside the audit chain.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kept_conversations",
        sa.Column("identity", sa.String(200), primary_key=True),
        sa.Column("updated_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("chats", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kept_conversations")
