"""study list order index carries the site and the patient; site grants by index

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 05:10:00.000000

Study lists walk ``ix_studies_date_time`` newest first and stop when a page is
full. Each entry they pass is tested for the caller's sites (``source_site``) and,
for a name search, for the patient (``patient_pk``); with both in the index those
tests no longer read the table row of a study that does not match. ``id`` is a key
column so the index gives the whole order (date, time, id) without a sort.

A site grant is a study_access row with ``user_pk IS NULL``; with user_pk in
``ix_study_access_site`` the grants of a caller's sites are read from the index.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORDER = ["study_date", "study_time"]
WITH_FILTERS = [*ORDER, "id", "source_site", "patient_pk"]


def upgrade() -> None:
    op.drop_index("ix_studies_date_time", table_name="studies")
    op.create_index("ix_studies_date_time", "studies", WITH_FILTERS)
    op.drop_index("ix_study_access_site", table_name="study_access")
    op.create_index("ix_study_access_site", "study_access", ["site", "user_pk", "study_pk"])


def downgrade() -> None:
    op.drop_index("ix_studies_date_time", table_name="studies")
    op.create_index("ix_studies_date_time", "studies", ORDER)
    op.drop_index("ix_study_access_site", table_name="study_access")
    op.create_index("ix_study_access_site", "study_access", ["site", "study_pk"])
