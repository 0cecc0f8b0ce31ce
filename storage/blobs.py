"""Blob store: where the DICOM files live, byte for byte as received.

The files are the source of truth; the SQL index is derived from them. Keys are
derived from a hash of the SOP Instance UID, never from the raw UID, so a hostile
UID cannot steer a path and the tree stays evenly spread (256 x 256 folders).

Durability: a blob becomes visible only by an atomic rename of a staged file that
has been fsynced, followed by an fsync of the directory that holds it. Staged files
live in ``.staging/`` under the root, on the same filesystem, so the rename never
copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

STAGING = ".staging"
PENDING = ".pending"


class BlobStoreError(OSError):
    """The store could not durably write or read a blob (disk full, read-only, gone)."""


def blob_key(sop_instance_uid: str) -> str:
    """Return the store key of an instance: ``ab/cd/<sha256 of the UID>.dcm``."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"


class BlobStore(Protocol):
    """What the archive needs from a place to keep files."""

    url: str

    def staging_dir(self) -> Path:
        """A folder for files being received, on the store's own filesystem."""
        ...

    def new_staging_file(self) -> Path:
        """A fresh, unused path in :meth:`staging_dir`."""
        ...

    def put(self, key: str, staged: Path, *, flushed: bool = False) -> None:
        """Durably move ``staged`` (a file in the staging folder) to ``key``:
        :meth:`place`, then :meth:`settle`."""
        ...

    def place(self, key: str, staged: Path, *, flushed: bool = False) -> None:
        """Move ``staged`` to ``key``: readable at once, durable after :meth:`settle`.

        ``flushed`` says the caller fsyncs the file itself (it did, or does before
        it acknowledges anything). Replaces any blob already at ``key``; raises
        :class:`BlobStoreError`.
        """
        ...

    def settle(self, key: str) -> None:
        """Make the placement of ``key`` durable; raises :class:`BlobStoreError`."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open a blob for reading; raises :class:`FileNotFoundError` if absent."""
        ...

    def mark_pending(self, key: str) -> None:
        """Note that ``key`` is being written and indexed (crash recovery)."""
        ...

    def unmark_pending(self, key: str) -> None: ...

    def pending_keys(self) -> list[str]:
        """Keys marked pending: a crash may have left them stored but not indexed."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """The blob's size in bytes, ``None`` if absent."""
        ...

    def delete(self, key: str) -> None: ...

    def iter_keys(self) -> Iterator[str]:
        """Every key in the store (staging files excluded)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The blob's path when it is a local file (lets senders stream it), else ``None``."""
        ...


class FileBlobStore:
    """Blobs as files under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()
        self._staging = self.root / STAGING
        self._staging.mkdir(parents=True, exist_ok=True)
        self._pending = self.root / PENDING
        self._pending.mkdir(exist_ok=True)

    def staging_dir(self) -> Path:
        return self._staging

    def new_staging_file(self) -> Path:
        """A fresh, unused path in the staging folder."""
        return self._staging / f"{uuid.uuid4().hex}.part"

    def put(self, key: str, staged: Path, *, flushed: bool = False) -> None:
        self.place(key, staged, flushed=flushed)
        self.settle(key)

    def place(self, key: str, staged: Path, *, flushed: bool = False) -> None:
        if staged.parent != self._staging:
            raise ValueError(f"{staged} is not in the staging folder {self._staging}")
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not flushed:
                _fsync_file(staged)
            os.replace(staged, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise BlobStoreError(exc.errno, f"cannot store blob {key}: {exc.strerror}") from exc

    def settle(self, key: str) -> None:
        # The rename is durable once the folder holding the new name is on disk.
        try:
            _fsync_dir(self._path(key).parent)
        except OSError as exc:
            raise BlobStoreError(exc.errno, f"cannot store blob {key}: {exc.strerror}") from exc

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def mark_pending(self, key: str) -> None:
        # An empty file named like the blob: cheap, and the key follows from the name.
        # Not fsynced: markers guard against a killed process, whose page cache
        # survives; after a power cut `pacs check --rebuild` is the remedy.
        try:
            os.close(os.open(self._pending / Path(key).name, os.O_CREAT | os.O_WRONLY, 0o644))
        except OSError as exc:
            raise BlobStoreError(exc.errno, f"cannot write to the store: {exc.strerror}") from exc

    def unmark_pending(self, key: str) -> None:
        # A marker left behind is harmless: recovery finds the blob indexed.
        with contextlib.suppress(OSError):
            (self._pending / Path(key).name).unlink()

    def pending_keys(self) -> list[str]:
        return [f"{m.name[:2]}/{m.name[2:4]}/{m.name}" for m in self._pending.iterdir()]

    def clear_staging(self, older_than: timedelta) -> int:
        """Remove staged files left by a crash; recent ones may belong to a live peer."""
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        for path in self._staging.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def iter_keys(self) -> Iterator[str]:
        for first in sorted(self.root.iterdir()):
            if first.name.startswith(".") or not first.is_dir():
                continue
            for path in sorted(first.rglob("*.dcm")):
                yield path.relative_to(self.root).as_posix()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _path(self, key: str) -> Path:
        # Keys come from blob_key(); refuse anything that could escape the root.
        if ".." in key or key.startswith("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key


def open_blob_store(url: str) -> FileBlobStore:
    """Open the store named by ``PACS_STORAGE_URL`` (``file://`` URLs today)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileBlobStore(Path(url2pathname(parsed.path)))
    if parsed.scheme == "":
        return FileBlobStore(Path(url))
    raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r} in {url!r}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_tempdir(store: FileBlobStore) -> str:
    """Point :mod:`tempfile` at the store's staging folder and return it.

    pynetdicom streams received datasets into ``NamedTemporaryFile()`` in the
    default temporary folder; putting that folder on the store's filesystem turns
    the final move into a rename instead of a copy.
    """
    tempfile.tempdir = str(store.staging_dir())
    return tempfile.tempdir
