"""STOW-RS (PS3.18 §10.5): store instances sent as ``multipart/related; type="application/dicom"``.

The body is parsed as it arrives (:mod:`api.dicomweb.multipart`): each part is
written straight into a file in the blob store's staging folder and handed to
:meth:`storage.Archive.ingest`, the same door C-STORE uses, while the next part
is still being read. Nothing holds a whole part, let alone a whole body, in
memory.

Limits (settings): a part over ``max_upload_part_bytes`` fails on its own
(FailureReason A700, its bytes dropped as they arrive) and the parts after it
are still stored; a body over ``max_upload_bytes`` is refused with 413 before
it is read when its Content-Length says so, else reading stops at the limit,
the part being received fails, and the parts completed before it stay stored.

Every failure is per part and leaves nothing behind: the staged file of a
failed, oversized, mismatched or cut-off part is removed and never indexed.

Statuses (PS3.18 Table 10.5.3-1): 200 every instance stored; 202 some stored,
with warnings or failures for others; 409 none stored (413 when size was the
only reason, 400 when the body itself was malformed); 400 for a request that is
not multipart/related with a boundary; 415 for another media type, including
the optional metadata + bulk data form (``type="application/dicom+json"``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.abc import TaskGroup
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydicom import dcmread
from starlette.requests import ClientDisconnect

from api.audit import audited
from api.auth import Principal
from api.dicomweb.common import Storer, json_response, origin
from api.dicomweb.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_content_type,
    valid_boundary,
)
from pacs import status as dicom_status
from pacs.settings import Settings
from storage import Archive, IngestResult, Outcome, Source
from storage.header import is_valid_uid
from storage.index import find_instance
from storage.scope import EVERYTHING, study_visibility

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(audited("store"))])

DICOM = "application/dicom"
MAX_PARTS = 50_000  # per request; bounds the response as the byte limit bounds the body
IN_FLIGHT = 4  # parts being ingested while the next one is read
FLUSH_BYTES = 1024 * 1024  # write staged parts in pieces this big, off the event loop
MAX_WARNINGS = 10  # Warning header fields naming failures
_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# The body is read by hand (streamed), so /docs learns its form from here.
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}


@router.post("/studies", openapi_extra=_BODY)
async def store_instances(request: Request, principal: Storer) -> Response:
    """Store the instances in the body, whatever their studies."""
    return await _store(request, None, principal)


@router.post("/studies/{study}", openapi_extra=_BODY)
async def store_study_instances(request: Request, study: str, principal: Storer) -> Response:
    """Store the instances in the body; an instance of another study fails (A900)."""
    if not is_valid_uid(study):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"StudyInstanceUID {study!r} is not a UID")
    return await _store(request, study, principal)


@dataclass(frozen=True)
class Uids:
    sop_class: str = ""
    sop_instance: str = ""
    study: str = ""
    series: str = ""


@dataclass(frozen=True)
class PartResult:
    """What became of one part of the body."""

    part: int
    uids: Uids
    failure: int | None = None  # FailureReason when not stored
    warning: int | None = None  # WarningReason when stored with a warning
    reason: str = ""
    too_large: bool = False

    @property
    def stored(self) -> bool:
        return self.failure is None


async def _store(request: Request, study: str | None, principal: Principal) -> Response:
    """Store the body's instances; they belong to the caller's site."""
    settings: Settings = request.app.state.settings
    boundary = _check_content_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the body of {declared} bytes is over the limit of {settings.max_upload_bytes} bytes",
        )
    source = Source(ae_title="STOW", site=principal.site)
    upload = _Upload(request.app.state.archive, settings, boundary, study, source)
    upload.scope = principal.storing_scope
    await upload.receive(request)
    if upload.disconnected:  # nobody to answer; what was complete is stored
        log.warning("STOW client went away after %d parts", upload.parser.parts)
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
    base = origin(request) + "/dicomweb"
    return upload.response(request, base)


def _check_content_type(value: str | None) -> str:
    """The boundary of a STOW request body, or the 400/415 that refuses it."""
    if not value:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom"; boundary=…',
        )
    media_type, params = parse_content_type(value)
    if media_type != "multipart/related":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f'{media_type or value!r} is not accepted: send multipart/related; type="{DICOM}"',
        )
    root_type = params.get("type", DICOM).split(";")[0].strip().lower()
    if root_type != DICOM:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"multipart/related of {root_type!r} is not accepted: only {DICOM} parts are "
            "(the metadata + bulk data form of STOW-RS is not supported)",
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "multipart/related without a boundary")
    if not valid_boundary(boundary):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed multipart boundary")
    return boundary


class _StagedPart:
    """One part of the body on its way into the staging folder."""

    def __init__(self, number: int, path: Path | None, fh: IO[bytes] | None) -> None:
        self.number = number
        self.path = path
        self.fh = fh
        self.size = 0
        self.pending = bytearray()
        self.failed: PartResult | None = None

    async def write(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self.pending and self.fh is not None:
            data, self.pending = self.pending, bytearray()
            await anyio.to_thread.run_sync(self.fh.write, data)

    async def finish(self) -> None:
        await self.flush()
        if self.fh is not None:
            fh, self.fh = self.fh, None
            await anyio.to_thread.run_sync(fh.close)

    def fail(self, failure: int, reason: str, *, too_large: bool = False) -> None:
        """Give up on this part: drop its bytes, keep only why (and its UIDs if readable)."""
        uids = Uids()
        if self.fh is not None:
            fh, self.fh = self.fh, None
            with contextlib.suppress(OSError):
                fh.write(self.pending)
                fh.close()
            if self.path is not None:
                uids = read_uids(self.path) or uids
        self.pending = bytearray()
        self.discard()
        self.failed = PartResult(self.number, uids, failure, None, reason, too_large)

    def discard(self) -> None:
        if self.fh is not None:
            fh, self.fh = self.fh, None
            with contextlib.suppress(OSError):
                fh.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Upload:
    """One STOW request: parse, stage, ingest, and remember what became of each part."""

    def __init__(
        self, archive: Archive, settings: Settings, boundary: str, study: str | None, source: Source
    ):
        self.archive = archive
        self.study = study
        self.source = source
        self.scope = EVERYTHING  # the studies the caller may add to
        self.max_part = settings.max_upload_part_bytes
        self.max_body = settings.max_upload_bytes
        self.parser = MultipartParser(boundary)
        self.results: list[PartResult] = []
        self.body_error = ""  # why the body as a whole was not (fully) understood
        self.body_too_large = False
        self.disconnected = False
        self._current: _StagedPart | None = None
        self._staged: set[Path] = set()
        self._slots = anyio.Semaphore(IN_FLIGHT)

    async def receive(self, request: Request) -> None:
        received = 0
        try:
            async with anyio.create_task_group() as tasks:
                try:
                    async for chunk in request.stream():
                        room = self.max_body - received
                        received += len(chunk)
                        # The bytes up to the limit are parsed, so every part that
                        # ends before it is stored however the body was chunked.
                        for event in self.parser.feed(chunk[:room]):
                            await self._on(event, tasks)
                            if self.body_too_large:
                                break
                        if received > self.max_body and not self.body_too_large:
                            await self._too_large_body()
                        if self.body_too_large:
                            break
                    else:
                        self.parser.close()
                except MultipartError as exc:
                    await self._malformed(str(exc))
                except ClientDisconnect:
                    self.disconnected = True  # let the parts being ingested finish
        finally:
            # A disconnect or a crash mid-part: nothing half-received may stay behind.
            if self._current is not None:
                self._current.discard()
                self._current = None
            for path in self._staged:
                path.unlink(missing_ok=True)

    async def _on(self, event: PartStart | PartData | PartEnd, tasks: TaskGroup) -> None:
        if isinstance(event, PartStart):
            await self._start(event)
            return
        part = self._current
        assert part is not None
        if isinstance(event, PartData):
            if part.failed is not None:
                return  # the rest of a part that has already failed
            if part.size + len(event.data) > self.max_part:
                part.pending += event.data[: self.max_part - part.size]  # its head: the UIDs
                await anyio.to_thread.run_sync(
                    partial(
                        part.fail,
                        dicom_status.OUT_OF_RESOURCES,
                        f"part is over the limit of {self.max_part} bytes",
                        too_large=True,
                    )
                )
                return
            part.size += len(event.data)
            try:
                await part.write(event.data)
            except OSError as exc:
                await anyio.to_thread.run_sync(
                    part.fail,
                    dicom_status.OUT_OF_RESOURCES,
                    f"cannot stage part: {exc.strerror or exc}",
                )
            return
        # PartEnd
        self._current = None
        if part.failed is not None:
            self.results.append(part.failed)
            return
        try:
            await part.finish()
        except OSError as exc:
            await anyio.to_thread.run_sync(
                part.fail,
                dicom_status.OUT_OF_RESOURCES,
                f"cannot stage part: {exc.strerror or exc}",
            )
            assert part.failed is not None
            self.results.append(part.failed)
            return
        assert part.path is not None
        await self._slots.acquire()
        tasks.start_soon(self._ingest, part.number, part.path)

    async def _start(self, event: PartStart) -> None:
        number = self.parser.parts
        if number > MAX_PARTS:
            self.body_error = f"more than {MAX_PARTS} parts in one request; the rest was not read"
            self.body_too_large = True
            return
        media_type, _ = parse_content_type(event.content_type or DICOM)
        if media_type != DICOM:
            part = _StagedPart(number, None, None)
            part.failed = PartResult(
                number,
                Uids(),
                dicom_status.CANNOT_UNDERSTAND,
                reason=f"a {media_type or 'untyped'} part: only {DICOM} parts are accepted",
            )
            self._current = part
            return
        path = self.archive.blobs.new_staging_file()
        try:
            fh = await anyio.to_thread.run_sync(partial(path.open, "wb"))
        except OSError as exc:
            part = _StagedPart(number, None, None)
            part.failed = PartResult(
                number,
                Uids(),
                dicom_status.OUT_OF_RESOURCES,
                reason=f"cannot stage part: {exc.strerror}",
            )
            self._current = part
            return
        self._staged.add(path)
        self._current = _StagedPart(number, path, fh)

    async def _ingest(self, number: int, path: Path) -> None:
        try:
            result = await anyio.to_thread.run_sync(self._store_part, number, path)
        finally:
            self._staged.discard(path)
            self._slots.release()
        self.results.append(result)

    def _store_part(self, number: int, path: Path) -> PartResult:
        """Ingest one complete part (in a worker thread); the staged file is consumed."""
        try:
            uids = read_uids(path)
            if self.study is not None:
                if uids is None:
                    return PartResult(
                        number, Uids(), dicom_status.CANNOT_UNDERSTAND, reason="not DICOM"
                    )
                if uids.study != self.study:
                    return PartResult(
                        number,
                        uids,
                        dicom_status.DATASET_MISMATCH,
                        reason=f"instance of study {uids.study or '(none)'}, not {self.study}",
                    )
            if uids is not None and not self._may_add_to(uids.study):
                return PartResult(
                    number,
                    uids,
                    dicom_status.NOT_AUTHORIZED,
                    reason="its study belongs to a site you may not store into",
                )
            result = self.archive.ingest(path, self.source, move=True)
            return self._part_result(number, uids or Uids(), result)
        except Exception:  # one broken part must not lose the others' answers
            log.exception("STOW part %d", number)
            return PartResult(
                number, Uids(), dicom_status.PROCESSING_FAILURE, reason="internal error"
            )
        finally:
            path.unlink(missing_ok=True)

    def _may_add_to(self, study: str) -> bool:
        """A new study, or one of the caller's sites (the route checked one in its path)."""
        if self.scope.everything or not study or study == self.study:
            return True
        with self.archive.sessions() as session:
            return study_visibility(session, self.scope, study) is not False

    def _part_result(self, number: int, uids: Uids, result: IngestResult) -> PartResult:
        uids = Uids(
            result.sop_class_uid or uids.sop_class,
            result.sop_instance_uid or uids.sop_instance,
            uids.study,
            uids.series,
        )
        if result.problem is not None:
            return PartResult(
                number, uids, dicom_status.FAILURE_STATUS[result.problem], reason=result.reason
            )
        if result.outcome is Outcome.KEPT_EXISTING:
            # The copy stored first is the one a retrieve returns; point at where it lives.
            with self.archive.sessions() as session:
                kept = find_instance(session, uids.sop_instance)
                if kept is not None:
                    series = kept.series
                    uids = Uids(
                        kept.sop_class_uid,
                        kept.sop_instance_uid,
                        series.study.study_instance_uid,
                        series.series_instance_uid,
                    )
            return PartResult(number, uids, None, dicom_status.ELEMENTS_DISCARDED, result.reason)
        return PartResult(number, uids)

    async def _too_large_body(self) -> None:
        self.body_too_large = True
        self.body_error = f"the body is over the limit of {self.max_body} bytes; rest not read"
        if self._current is not None:
            await self._fail_current(dicom_status.OUT_OF_RESOURCES, self.body_error, too_large=True)

    async def _malformed(self, reason: str) -> None:
        self.body_error = f"malformed multipart body: {reason}"
        if self._current is not None:
            await self._fail_current(dicom_status.CANNOT_UNDERSTAND, self.body_error)

    async def _fail_current(self, failure: int, reason: str, *, too_large: bool = False) -> None:
        part, self._current = self._current, None
        assert part is not None
        if part.failed is None:
            await anyio.to_thread.run_sync(partial(part.fail, failure, reason, too_large=too_large))
        assert part.failed is not None
        self.results.append(part.failed)
        if part.path is not None:
            self._staged.discard(part.path)

    def response(self, request: Request, base: str) -> Response:
        results = sorted(self.results, key=lambda r: r.part)
        stored = [r for r in results if r.stored]
        failed = [r for r in results if not r.stored]
        if not results and self.body_error:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, self.body_error)
        if not results:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the body holds no parts")
        if stored:
            clean = not failed and not self.body_error and all(r.warning is None for r in stored)
            code = status.HTTP_200_OK if clean else status.HTTP_202_ACCEPTED
        elif self.body_too_large or all(r.too_large for r in failed):
            code = status.HTTP_413_CONTENT_TOO_LARGE
        elif self.body_error:
            code = status.HTTP_400_BAD_REQUEST
        else:
            code = status.HTTP_409_CONFLICT
        log.info(
            "STOW: %d stored, %d failed%s",
            len(stored),
            len(failed),
            f" ({self.body_error})" if self.body_error else "",
        )
        payload = _response_payload(stored, failed, base, self.study)
        noted = [r for r in results if r.reason and (r.failure or r.warning)]
        warnings = [f"part {r.part}: {r.reason}" for r in noted][:MAX_WARNINGS]
        if self.body_error and all(r.reason != self.body_error for r in failed):
            warnings.append(self.body_error)
        headers = {"Warning": ", ".join(f'299 pacs "{_header_text(w)}"' for w in warnings)}
        response = json_response(request, payload, headers if warnings else None)
        response.status_code = code
        return response


def read_uids(path: Path) -> Uids | None:
    """The identifying UIDs of a staged DICOM file (only those well-formed), or None."""
    try:
        with path.open("rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=list(_UID_KEYWORDS))
            values = [str(ds.get(keyword) or "") for keyword in _UID_KEYWORDS]
    except Exception:  # pydicom raises many types on garbage input
        return None
    return Uids(*(value if is_valid_uid(value) else "" for value in values))


def _response_payload(
    stored: list[PartResult], failed: list[PartResult], base: str, study: str | None
) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Annex I) in DICOM JSON."""
    studies = {r.uids.study for r in stored}
    study_uid = study or (studies.pop() if len(studies) == 1 else "")
    payload: dict[str, Any] = {"00081190": _ur(f"{base}/studies/{study_uid}" if study_uid else "")}
    if failed:
        payload["00081198"] = {"vr": "SQ", "Value": [_failed_item(r) for r in failed]}
    if stored:
        payload["00081199"] = {"vr": "SQ", "Value": [_referenced_item(r, base) for r in stored]}
    return payload


def _sop_reference(uids: Uids) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if uids.sop_class:
        item["00081150"] = {"vr": "UI", "Value": [uids.sop_class]}
    if uids.sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [uids.sop_instance]}
    return item


def _failed_item(result: PartResult) -> dict[str, Any]:
    return {**_sop_reference(result.uids), "00081197": {"vr": "US", "Value": [result.failure]}}


def _referenced_item(result: PartResult, base: str) -> dict[str, Any]:
    uids = result.uids
    url = ""
    if uids.study and uids.series and uids.sop_instance:
        url = f"{base}/studies/{uids.study}/series/{uids.series}/instances/{uids.sop_instance}"
    item = {**_sop_reference(uids), "00081190": _ur(url)}
    if result.warning is not None:
        item["00081196"] = {"vr": "US", "Value": [result.warning]}
    return item


def _ur(url: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [url]} if url else {"vr": "UR"}


def _header_text(text: str) -> str:
    """Printable ASCII without quotes or backslashes, short: safe inside a quoted header value."""
    clean = "".join(c if " " <= c <= "~" and c not in '"\\' else " " for c in text)
    return clean[:200]
