"""Opening the archive a process works on, from its settings."""

from __future__ import annotations

import logging
import secrets

from sqlalchemy import inspect

from pacs.settings import Settings
from storage import Archive, open_archive
from storage.database import is_current, upgrade
from storage.users import Role, create_user, list_users

log = logging.getLogger(__name__)


class SchemaOutdated(RuntimeError):
    pass


def archive_from_settings(settings: Settings, *, create_schema: bool = False) -> Archive:
    """Open the index and blob store.

    With ``create_schema`` an empty database gets the schema (first start of
    ``pacs serve``); an existing one that is behind is refused, because
    migrating a shared production database is an explicit ``pacs db upgrade``.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    archive = open_archive(settings.database_url, settings.storage_url, settings.duplicate_policy)
    engine = archive.sessions.kw["bind"]
    if create_schema and not inspect(engine).get_table_names():
        log.info("empty index database: creating the schema")
        upgrade(engine)
    if not is_current(engine):
        raise SchemaOutdated("the index database schema is not current: run `pacs db upgrade`")
    return archive


def ensure_first_admin(archive: Archive, settings: Settings) -> str | None:
    """Create user ``admin`` when there are no users; return a generated password."""
    with archive.sessions() as session:
        if list_users(session):
            return None
        password = settings.admin_password or secrets.token_urlsafe(12)
        create_user(session, "admin", password, Role.ADMIN)
        session.commit()
    return None if settings.admin_password else password
