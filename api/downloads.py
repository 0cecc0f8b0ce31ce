"""``GET /api/studies/{study}[/series/{series}]/download``: images for a doctor's own disk.

The answer is a ZIP holding a DICOM File-set: every instance, byte for byte as
stored, under the File ID its DICOMDIR record gives it, and the ``DICOMDIR`` at
the root (:mod:`pacs.dicomdir`), so DICOM viewers and CD burners open it as they
would a study CD (PS3.10 §8, PS3.11 STD-GEN-CD).

Before the response starts, every file is checked to be there and placed in the
File-set (images from the index, other instances from their header), so a missing
or unreadable instance is a clear error rather than a truncated ZIP. The files then
stream at once, one chunk at a time (:mod:`api.zip_stream`), and the DICOMDIR,
encoded from the records kept meanwhile, is the last member: readers find it by
name, not by its place in the ZIP. Memory stays flat whatever the size of the study.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from functools import partial
from typing import BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.audit import audited
from api.dicomweb.common import Reader
from api.dicomweb.wado import check_uids
from api.zip_stream import Member, zip_stream
from pacs.dicomdir import DicomdirError, plan_file_set
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
        plan, paths = await run_in_threadpool(plan_file_set, instances, partial(_open, blobs))
    except DicomdirError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    members = [
        Member(
            paths[i.stored.sop_instance_uid],
            i.stored.file_size,
            partial(_open, blobs, i.stored),
        )
        for i in instances
    ]
    members.append(Member("DICOMDIR", None, lambda: io.BytesIO(plan.dicomdir())))
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


def _logged(chunks: Iterator[bytes], study: str) -> Iterator[bytes]:
    """The stream, with a failure half-way logged (the client sees a cut-off ZIP)."""
    try:
        yield from chunks
    except OSError:
        log.exception("download of study %s failed while streaming", study)
        raise
