"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select

from storage import Archive
from storage.database import alembic_config, is_current, upgrade
from storage.models import Base, Patient, PatientNameWord


def test_migrations_match_the_models(archive: Archive) -> None:
    engine = archive.sessions.kw["bind"]
    assert is_current(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []


def test_patients_indexed_before_0007_get_their_name_words(archive: Archive) -> None:
    engine = archive.sessions.kw["bind"]
    command.downgrade(alembic_config(engine), "0006")  # the words table goes
    with engine.begin() as conn:
        conn.execute(
            insert(Patient),
            [
                {"patient_id": "1", "patient_name_key": "nguyen^van an"},
                {"patient_id": "2", "patient_name_key": "tran^thi=tran thi"},
                {"patient_id": "3", "patient_name_key": ""},
            ],
        )
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(PatientNameWord.word, Patient.patient_id).join(Patient)).all()
    assert sorted(rows) == [("an", "1"), ("nguyen", "1"), ("thi", "2"), ("tran", "2"), ("van", "1")]
