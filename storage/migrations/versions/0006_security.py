"""security: user state and sites, study access grants, ATNA audit fields

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 01:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        users.add_column(
            sa.Column("token_version", sa.Integer(), nullable=False, server_default="0")
        )
        users.add_column(
            sa.Column("failed_sign_ins", sa.Integer(), nullable=False, server_default="0")
        )
        users.add_column(sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
        users.add_column(
            sa.Column(
                "referring_name_key", sa.String(length=324), nullable=False, server_default=""
            )
        )
        users.create_index("ix_users_referring_name_key", ["referring_name_key"])
    op.create_table(
        "user_sites",
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_pk"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_pk", "site"),
    )
    op.create_table(
        "study_access",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_pk"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_study_access_study_pk", "study_access", ["study_pk"])
    op.create_index("ix_study_access_site", "study_access", ["site", "study_pk"])
    op.create_index("ix_study_access_user", "study_access", ["user_pk", "study_pk"])
    with op.batch_alter_table("audit_events") as audit:
        audit.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default=""))
        audit.add_column(sa.Column("site", sa.String(length=64), nullable=False, server_default=""))
        audit.add_column(
            sa.Column("patient_id", sa.String(length=64), nullable=False, server_default="")
        )
        audit.add_column(
            sa.Column("event_type", sa.String(length=48), nullable=False, server_default="")
        )
        audit.add_column(sa.Column("outcome", sa.Integer(), nullable=False, server_default="0"))
        audit.create_index("ix_audit_events_patient_id", ["patient_id"])
        audit.create_index("ix_audit_events_event_type", ["event_type"])


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as audit:
        audit.drop_index("ix_audit_events_event_type")
        audit.drop_index("ix_audit_events_patient_id")
        for column in ("outcome", "event_type", "patient_id", "site", "role"):
            audit.drop_column(column)
    op.drop_table("study_access")
    op.drop_table("user_sites")
    with op.batch_alter_table("users") as users:
        users.drop_index("ix_users_referring_name_key")
        for column in (
            "referring_name_key",
            "locked_until",
            "failed_sign_ins",
            "token_version",
            "disabled",
        ):
            users.drop_column(column)
