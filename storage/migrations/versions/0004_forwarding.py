"""forwarding jobs and routing rules

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 08:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "forward_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=80), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("failed_uids", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("forward_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_forward_jobs_due", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_forward_jobs_node"), ["node"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_forward_jobs_study_instance_uid"), ["study_instance_uid"], unique=False
        )
    op.create_table(
        "forwarded_instances",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["forward_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "sop_instance_uid"),
    )
    op.create_table(
        "routing_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=16), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("destinations", sa.Text(), nullable=False),
        sa.Column("checked_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("routing_rules")
    op.drop_table("forwarded_instances")
    with op.batch_alter_table("forward_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_forward_jobs_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_forward_jobs_node"))
        batch_op.drop_index("ix_forward_jobs_due")

    op.drop_table("forward_jobs")
