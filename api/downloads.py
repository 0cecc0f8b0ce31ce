"""``GET /api/studies/{study}[/series/{series}]/download``: images for a doctor's own disk.

The answer is a ZIP holding a DICOM File-set: ``DICOMDIR`` at the root (made with
``pydicom.fileset``, :mod:`pacs.dicomdir`) and every instance, byte for byte as
stored, under the File ID the DICOMDIR gives it, so DICOM viewers and CD burners
open it as they would a study CD (PS3.10 §8, PS3.11 STD-GEN-CD).

The DICOMDIR is planned (from the index, and the headers of non-image instances)
before the response starts, and every file is checked to be there, so a missing or
unreadable instance is a clear error rather than a truncated ZIP; the files are then
streamed one chunk at a time (:mod:`api.zip_stream`): memory stays flat whatever the
size of the study. The last few plans are kept, so downloading an unchanged study
again starts at once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from typing import BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.audit import audited
from api.dicomweb.common import Reader
from api.dicomweb.wado import check_uids
from api.zip_stream import Member, zip_stream
from pacs.dicomdir import DicomdirError, FileSetPlan, plan_file_set
from storage import Archive
from storage.blobs import BlobStore
from storage.export import ExportedInstance, export_instances
from storage.retrieve import StoredInstance

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["downloads"], dependencies=[Depends(audited("download"))])
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@router.get("/studies/{study}/download")
async def download_study(request: Request, study: str, _: Reader) -> StreamingResponse:
    """The whole study as a ZIP with a DICOMDIR."""
    return await study_zip(request, study)


@router.get("/studies/{study}/series/{series}/download")
async def download_series(
    request: Request, study: str, series: str, _: Reader
) -> StreamingResponse:
    """One series as a ZIP with a DICOMDIR."""
    return await study_zip(request, study, series)


async def study_zip(request: Request, study: str, series: str | None = None) -> StreamingResponse:
    """The streamed ZIP response for the study (or series); also serves share links."""
    check_uids(study, series)
    archive: Archive = request.app.state.archive
    instances = await run_in_threadpool(_instances, archive, study, series)
    blobs = archive.blobs
    try:
        plan = await run_in_threadpool(_plans.plan, instances, partial(_open, blobs))
    except DicomdirError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    members = [Member("DICOMDIR", len(plan.dicomdir), partial(io.BytesIO, plan.dicomdir))]
    members += [
        Member(
            plan.paths[i.stored.sop_instance_uid],
            i.stored.file_size,
            partial(_open, blobs, i.stored),
        )
        for i in instances
    ]
    name = _UNSAFE.sub("_", f"{study}-{series}" if series else study)[:120]
    return StreamingResponse(
        _logged(zip_stream(members), study),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


def _instances(archive: Archive, study: str, series: str | None) -> list[ExportedInstance]:
    """The instances to send, each file checked to be there: a missing one is an
    error now, not a ZIP cut off half-way."""
    with archive.sessions() as session:
        instances = export_instances(session, study, series)
    if not instances:
        missing = f"no series {series} in study {study}" if series else f"no study {study}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, missing)
    for instance in instances:
        if not archive.blobs.exists(instance.stored.blob_key):
            log.error(
                "blob %s of %s is missing",
                instance.stored.blob_key,
                instance.stored.sop_instance_uid,
            )
            raise HTTPException(
                status.HTTP_500_INTERNAL_SERVER_ERROR,
                f"the stored file of instance {instance.stored.sop_instance_uid} is missing; "
                "an administrator should run `pacs check`",
            )
    return instances


def _open(blobs: BlobStore, stored: StoredInstance) -> BinaryIO:
    return blobs.open(stored.blob_key)


class _PlanCache:
    """The last few File-set plans, keyed by exactly what was exported (each instance
    and its file's hash): a second download of an unchanged study starts at once."""

    def __init__(self, size: int = 8) -> None:
        self._plans: OrderedDict[str, FileSetPlan] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def plan(
        self, instances: list[ExportedInstance], open_file: Callable[[StoredInstance], BinaryIO]
    ) -> FileSetPlan:
        digest = hashlib.sha256()
        for instance in instances:
            digest.update(f"{instance.stored.sop_instance_uid}:{instance.stored.sha256};".encode())
        key = digest.hexdigest()
        with self._lock:
            if (found := self._plans.get(key)) is not None:
                self._plans.move_to_end(key)
                return found
        made = plan_file_set(instances, open_file)
        with self._lock:
            self._plans[key] = made
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return made


_plans = _PlanCache()


def _logged(chunks: Iterator[bytes], study: str) -> Iterator[bytes]:
    """The stream, with a failure half-way logged (the client sees a cut-off ZIP)."""
    try:
        yield from chunks
    except OSError:
        log.exception("download of study %s failed while streaming", study)
        raise
