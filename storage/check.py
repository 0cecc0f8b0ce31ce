"""``pacs check``: is the index a faithful picture of the blob store?

The blobs are the source of truth. A check reports index rows whose file is
missing or has other bytes (size or SHA-256), and files no row points at.
:func:`rebuild` throws the index rows away and derives them again from the files.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, select

from storage.index import add_instance
from storage.ingest import Archive
from storage.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass
class CheckReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # SOP Instance UIDs without a file
    corrupt: list[str] = field(default_factory=list)  # file differs from the indexed hash
    unindexed: list[str] = field(default_factory=list)  # blob keys without a row

    @property
    def consistent(self) -> bool:
        return not (self.missing or self.corrupt or self.unindexed)


def check(archive: Archive, progress: Progress | None = None) -> CheckReport:
    """Compare every index row with its file, then look for files nobody indexed."""
    report = CheckReport()
    indexed: set[str] = set()
    with archive.sessions() as session:
        columns = (Instance.sop_instance_uid, Instance.blob_key, Instance.file_size)
        rows = session.execute(select(*columns, Instance.sha256)).yield_per(1000)
        for uid, key, size, sha in rows:
            indexed.add(key)
            report.checked += 1
            digest = _sha256(archive, key)
            if digest is None:
                report.missing.append(uid)
            elif digest != (size, sha):
                report.corrupt.append(uid)
            if progress:
                progress(1)
    report.unindexed = [key for key in archive.blobs.iter_keys() if key not in indexed]
    return report


def rebuild(archive: Archive, progress: Progress | None = None) -> tuple[int, list[str]]:
    """Re-derive the whole index from the blobs; returns (indexed, unreadable keys)."""
    unreadable: list[str] = []
    count = 0
    with archive.sessions() as session:
        for model in (Instance, Series, Study, Patient):
            session.execute(delete(model))
        for key in archive.blobs.iter_keys():
            if progress:
                progress(1)
            found = archive.read_blob(key)
            if found is None:
                unreadable.append(key)
                continue
            header, stored = found
            add_instance(session, header.record, stored)
            session.flush()
            count += 1
            if count % 1000 == 0:
                session.commit()
        session.commit()
    return count, unreadable


def _sha256(archive: Archive, key: str) -> tuple[int, str] | None:
    digest = hashlib.sha256()
    size = 0
    try:
        with archive.blobs.open(key) as fh:
            while chunk := fh.read(1024 * 1024):
                size += len(chunk)
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return size, digest.hexdigest()
