"""study list order index carries the site and the patient; site grants by index;
patient name words for fuzzy matching

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

``patient_name_words`` holds each word of each patient's folded name, so a fuzzy
name match is an index range instead of a LIKE on every name; filled here for the
patients already indexed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pacs.charset import NAME_WORD_LENGTH, name_words

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORDER = ["study_date", "study_time"]
BATCH = 10_000
WITH_FILTERS = [*ORDER, "id", "source_site", "patient_pk"]


def upgrade() -> None:
    op.drop_index("ix_studies_date_time", table_name="studies")
    op.create_index("ix_studies_date_time", "studies", WITH_FILTERS)
    op.drop_index("ix_study_access_site", table_name="study_access")
    op.create_index("ix_study_access_site", "study_access", ["site", "user_pk", "study_pk"])
    words = op.create_table(
        "patient_name_words",
        sa.Column(
            "word",
            sa.String(NAME_WORD_LENGTH).with_variant(
                sa.String(NAME_WORD_LENGTH, collation="C"), "postgresql"
            ),
            nullable=False,
        ),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patients.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("word", "patient_pk"),
    )
    _fill_words(words)


def _fill_words(words: sa.Table) -> None:
    """The words of the names of the patients indexed so far, in batches."""
    conn = op.get_bind()
    patients = sa.table("patients", sa.column("id", sa.Integer), sa.column("patient_name_key"))
    last = 0
    while True:
        rows = conn.execute(
            sa.select(patients.c.id, patients.c.patient_name_key)
            .where(patients.c.id > last)
            .order_by(patients.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        batch = [{"word": w, "patient_pk": pk} for pk, key in rows for w in name_words(key)]
        if batch:
            conn.execute(words.insert(), batch)
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_table("patient_name_words")
    op.drop_index("ix_studies_date_time", table_name="studies")
    op.create_index("ix_studies_date_time", "studies", ORDER)
    op.drop_index("ix_study_access_site", table_name="study_access")
    op.create_index("ix_study_access_site", "study_access", ["site", "study_pk"])
