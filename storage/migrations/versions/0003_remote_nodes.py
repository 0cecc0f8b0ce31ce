"""remote nodes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 08:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "remote_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("may_store", sa.Boolean(), nullable=False),
        sa.Column("may_query", sa.Boolean(), nullable=False),
        sa.Column("may_retrieve", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("remote_nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_remote_nodes_ae_title"), ["ae_title"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("remote_nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_remote_nodes_ae_title"))

    op.drop_table("remote_nodes")
