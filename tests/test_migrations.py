"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage import Archive
from storage.database import is_current
from storage.models import Base


def test_migrations_match_the_models(archive: Archive) -> None:
    engine = archive.sessions.kw["bind"]
    assert is_current(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []
