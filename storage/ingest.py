"""The one door into the archive: C-STORE, STOW-RS and ``pacs import`` all call
:meth:`Archive.ingest`.

Order of events for a new instance, and why:

1. read and check the header only (pixels are never decoded on ingest);
2. stage the bytes in the store's staging folder and hash them;
3. under a per-UID lock, compare with what the index holds (duplicates);
4. rename the blob into place and write and commit the index row, while its
   bytes and then its folder are flushed to disk;
5. only when all of that is done report success. If the index write fails the
   new blob is removed again, so an error leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.attributes import IndexRecord
from storage.blobs import BlobStore, BlobStoreError, blob_key
from storage.header import Header, InvalidInstance, MismatchedInstance, read_header
from storage.index import (
    ParentCache,
    StaleParents,
    add_instance,
    find_instance,
    remove_instance,
    stored_sha256,
)
from storage.models import Instance

log = logging.getLogger(__name__)

INSTANCES = Counter("pacs_instances_received_total", "Instances offered to ingest", ["outcome"])
BYTES = Counter("pacs_received_bytes_total", "Bytes of instances newly stored")
STORE_SECONDS = Histogram(
    "pacs_store_seconds",
    "Time to durably store and index one instance",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

_CHUNK = 1024 * 1024


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with different bytes."""

    KEEP_FIRST = "keep-first"  # keep the stored copy, answer with a warning
    REPLACE = "replace"  # store the new copy in place of the old one
    REJECT = "reject"  # keep the stored copy, answer with a failure


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same UID, same bytes: idempotent success
    KEPT_EXISTING = "kept-existing"  # same UID, other bytes, first copy kept: warning
    REPLACED = "replaced"
    REJECTED = "rejected"


class Problem(StrEnum):
    """Why an instance was rejected; each side maps it to its own status code."""

    INVALID = "invalid"  # not DICOM, truncated, bad UIDs
    MISMATCH = "mismatch"  # dataset contradicts the request (SOP UIDs)
    CONFLICT = "conflict"  # same UID, other bytes, policy says reject
    OUT_OF_RESOURCES = "out-of-resources"  # disk full, store unwritable, index down


@dataclass(frozen=True)
class Source:
    """Who is giving us the instance, and what they announced about it."""

    ae_title: str = ""
    site: str = ""
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    reason: str = ""
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is not Outcome.REJECTED


class Archive:
    """The blob store and the index, kept consistent with each other."""

    def __init__(
        self,
        blobs: BlobStore,
        sessions: sessionmaker[Session],
        policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST,
    ) -> None:
        self.blobs = blobs
        self.sessions = sessions
        self._engine = sessions.kw["bind"]
        self.policy = policy
        self._locks = [threading.Lock() for _ in range(64)]  # per SOP Instance UID
        # One index writer per process: SQLite has one writer anyway, and it stops two
        # associations of this process racing to create the same study.
        self._index_lock = threading.Lock()
        self._parents = ParentCache()
        self._flusher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="flush")

    def is_empty(self) -> bool:
        """True when no instance is indexed."""
        with self.sessions() as session:
            return session.scalar(select(Instance.id).limit(1)) is None

    def ingest(
        self,
        path: Path,
        source: Source | None = None,
        *,
        move: bool = False,
        sha256: str | None = None,
    ) -> IngestResult:
        """Store the DICOM file at ``path`` and index it.

        With ``move=True`` the file is consumed (a received temporary file);
        otherwise it is copied and left where it is (``pacs import``). ``sha256``:
        the file's SHA-256, when its writer computed it (the Storage SCP does).
        """
        started = time.perf_counter()
        source = source or Source()
        try:
            result = self._ingest(path, source, move, sha256)
        finally:
            if move:
                path.unlink(missing_ok=True)
        INSTANCES.labels(result.outcome.value).inc()
        if result.outcome in (Outcome.STORED, Outcome.REPLACED):
            STORE_SECONDS.observe(time.perf_counter() - started)
        if not result.ok:
            log.warning("rejected %s from %r: %s", path.name, source.ae_title, result.reason)
        return result

    def _ingest(self, path: Path, source: Source, move: bool, sha256: str | None) -> IngestResult:
        received = move and path.parent == self.blobs.staging_dir()
        # A received file is hashed by one worker and flushed to disk by another
        # while this thread parses its header, asks the index about it and writes
        # its row (hashlib and fsync release the GIL); see _write for the order.
        flushing = self._flush_received(path) if received else None
        hashing = self._flusher.submit(_sha256, path) if received and not sha256 else None
        try:
            header = read_header(path)
            _check_announced(header, source)
        except InvalidInstance as exc:
            if hashing is not None:
                hashing.exception()  # let the worker finish before the file goes
            problem = Problem.MISMATCH if isinstance(exc, MismatchedInstance) else Problem.INVALID
            return _rejected(problem, str(exc), source)
        record = header.record
        uid = header.sop_instance_uid
        result = IngestResult(
            Outcome.STORED,
            uid,
            record.instance["sop_class_uid"],
            record.study["study_instance_uid"],
        )
        with self._locks[hash(uid) % len(self._locks)]:
            key = blob_key(uid)
            try:
                with self._engine.connect() as conn:
                    existing_sha = stored_sha256(conn, uid)
                try:
                    if not received:
                        staged, digest = self._copy_to_staging(path)
                    elif hashing is None:
                        staged, digest = path, str(sha256)  # hashed by its writer
                    else:
                        staged, digest = path, hashing.result()
                except OSError as exc:
                    return _rejected(Problem.OUT_OF_RESOURCES, f"cannot stage file: {exc}", source)
                try:
                    stored = _stored_columns(key, header, digest, source.ae_title)
                    staging = _Staging(staged, flushing)
                    return self._write(record, staging, stored, existing_sha, source, result)
                finally:
                    staged.unlink(missing_ok=True)
            except (BlobStoreError, OperationalError) as exc:
                log.error("cannot store %s: %s", uid, exc)
                return _rejected(Problem.OUT_OF_RESOURCES, f"cannot store: {exc}", source)

    def _flush_received(self, path: Path) -> Future[None]:
        """fsync ``path`` in a worker; opened here, so the worker still reaches the
        file after it is renamed into place."""
        fd = os.open(path, os.O_RDONLY)
        try:
            return self._flusher.submit(_fsync_and_close, fd)
        except BaseException:
            os.close(fd)
            raise

    def _copy_to_staging(self, path: Path) -> tuple[Path, str]:
        """Copy a file the caller keeps (``pacs import``) into staging, hashing it."""
        digest = hashlib.sha256()
        staged = self.blobs.new_staging_file()
        with path.open("rb") as src, staged.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        return staged, digest.hexdigest()

    def _write(
        self,
        record: IndexRecord,
        staging: _Staging,
        stored: dict[str, Any],
        existing_sha: str | None,
        source: Source,
        result: IngestResult,
    ) -> IngestResult:
        key = stored["blob_key"]
        if existing_sha == stored["sha256"]:
            if self.blobs.size(key) == stored["file_size"]:
                return _with(result, Outcome.DUPLICATE, "identical instance already stored")
            # Indexed, but the file is gone or cut short (a power cut before its bytes
            # or its folder reached the disk; it was never acknowledged then, so the
            # sender sends it again; or a deleted file): this copy takes its place.
            log.warning("%s was indexed without its whole file: storing it again", key)
        elif existing_sha and self.policy is DuplicatePolicy.KEEP_FIRST:
            log.warning(
                "%s resent %s with other content: kept the first",
                source.ae_title,
                result.sop_instance_uid,
            )
            return _with(
                result,
                Outcome.KEPT_EXISTING,
                "different instance with this SOP Instance UID already stored; kept the first",
            )
        elif existing_sha and self.policy is DuplicatePolicy.REJECT:
            return _rejected(
                Problem.CONFLICT,
                "SOP Instance UID already stored with different content",
                source,
                result,
            )
        # The blob is placed under its final name and its row written while a worker
        # flushes its bytes to disk; the answer waits for that flush and for the
        # folder's (the new name), so success still means durably stored, and the
        # index write (about a millisecond) no longer waits for the disk. A process
        # killed at any point leaves the whole file in the page cache; a pending
        # marker covers one killed between placing the blob and committing its row
        # (recover_pending() indexes it on restart). The database's write lock is
        # never held across a disk flush. (Making the marker in a worker too saved
        # nothing: bench/ingest.py, 4 interleaved rounds each.)
        self.blobs.mark_pending(key)
        self.blobs.place(key, staging.path, flushed=True)
        settling = self._flusher.submit(self.blobs.settle, key)
        try:
            self._index(record, stored, source.site, replace=existing_sha is not None)
        except Exception:
            settling.exception()
            if existing_sha is None:
                self.blobs.delete(key)
            raise
        finally:
            self.blobs.unmark_pending(key)
        # A failure here leaves blob and row, consistent; the instance is not acknowledged.
        _durable(key, staging.flushing)
        settling.result()
        BYTES.inc(stored["file_size"])
        return _with(result, Outcome.REPLACED if existing_sha else Outcome.STORED)

    def read_blob(self, key: str) -> tuple[Header, dict[str, Any]] | None:
        """Header and storage columns of a blob already in the store, or ``None``
        when it is unreadable (used to recover and to rebuild the index)."""
        path = self.blobs.local_path(key)
        if path is None:
            return None
        try:
            header = read_header(path)
        except (InvalidInstance, FileNotFoundError) as exc:
            log.error("cannot index blob %s: %s", key, exc)
            return None
        return header, _stored_columns(key, header, _sha256(path), "")

    def recover_pending(self) -> int:
        """Index blobs a killed process stored but did not index; returns how many."""
        recovered = 0
        for key in self.blobs.pending_keys():
            found = self.read_blob(key) if self.blobs.exists(key) else None
            if found is not None:
                header, stored = found
                with self.sessions() as session:
                    indexed = find_instance(session, header.sop_instance_uid)
                if indexed is None:
                    self._index(header.record, stored, "", replace=False)
                    recovered += 1
                    log.warning("recovered %s, stored but not indexed before a crash", key)
            self.blobs.unmark_pending(key)
        return recovered

    def _index(
        self, record: IndexRecord, stored: dict[str, Any], site: str, *, replace: bool
    ) -> None:
        """Write the index rows; retried when another process changed a parent row."""
        for attempt in range(3):
            try:
                with self._index_lock, self.sessions() as session:
                    if replace and (
                        old := find_instance(session, record.instance["sop_instance_uid"])
                    ):
                        remove_instance(session, old)
                        self._parents.clear()
                    add_instance(session, record, stored, site=site, cache=self._parents)
                    session.commit()
                    return
            except (IntegrityError, StaleParents):
                self._parents.clear()
                if attempt == 2:
                    raise


@dataclass(frozen=True)
class _Staging:
    """A staged file on its way into the store and its flush to disk, under way in
    a worker (``None``: flushed when it was staged)."""

    path: Path
    flushing: Future[None] | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable(key: str, flushing: Future[None] | None) -> None:
    """Wait for a received file's flush (``None``: the file was flushed when staged)."""
    if flushing is None:
        return
    try:
        flushing.result()
    except OSError as exc:
        raise BlobStoreError(exc.errno, f"cannot store blob {key}: {exc.strerror}") from exc


def _stored_columns(key: str, header: Header, sha256: str, ae_title: str) -> dict[str, Any]:
    return {
        "blob_key": key,
        "file_size": header.file_size,
        "sha256": sha256,
        "transfer_syntax_uid": str(header.transfer_syntax_uid),
        "source_ae": ae_title[:16],
    }


def _check_announced(header: Header, source: Source) -> None:
    instance = header.record.instance
    if source.sop_instance_uid and source.sop_instance_uid != instance["sop_instance_uid"]:
        raise MismatchedInstance(
            f"dataset SOPInstanceUID {instance['sop_instance_uid']} is not the announced "
            f"{source.sop_instance_uid}"
        )
    if source.sop_class_uid and source.sop_class_uid != instance["sop_class_uid"]:
        raise MismatchedInstance(
            f"dataset SOPClassUID {instance['sop_class_uid']} is not the announced "
            f"{source.sop_class_uid}"
        )


def _with(result: IngestResult, outcome: Outcome, reason: str = "") -> IngestResult:
    return IngestResult(
        outcome, result.sop_instance_uid, result.sop_class_uid, result.study_instance_uid, reason
    )


def _rejected(
    problem: Problem, reason: str, source: Source, result: IngestResult | None = None
) -> IngestResult:
    uid = result.sop_instance_uid if result else (source.sop_instance_uid or "")
    return IngestResult(Outcome.REJECTED, uid, reason=reason, problem=problem)
