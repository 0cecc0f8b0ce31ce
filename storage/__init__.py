"""Persistence: the blob store, the SQL index and the one ingest function."""

from __future__ import annotations

from storage.blobs import open_blob_store
from storage.database import make_engine, make_sessionmaker
from storage.ingest import Archive, DuplicatePolicy, IngestResult, Outcome, Problem, Source

__all__ = [
    "Archive",
    "DuplicatePolicy",
    "IngestResult",
    "Outcome",
    "Problem",
    "Source",
    "open_archive",
]


def open_archive(
    database_url: str,
    storage_url: str,
    policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST,
) -> Archive:
    """Connect to the index and the blob store named by the settings."""
    engine = make_engine(database_url)
    return Archive(open_blob_store(storage_url), make_sessionmaker(engine), policy)
