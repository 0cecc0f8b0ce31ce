"""WADO-URI (PS3.18 §9): ``GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``.

``contentType`` picks the answer. ``application/dicom`` (the default for objects
without pixels) is the Part 10 file: ``transferSyntax`` absent means Explicit VR
Little Endian (the PS3.18 default), ``*`` or the stored syntax means the file byte
for byte as stored. ``image/jpeg`` (the default for images), ``image/png``,
``image/gif`` (and ``image/webp``) are rendered like DICOMweb ``rendered``
(api/dicomweb/rendered.py: same pipeline, cache and ETags) with ``windowCenter`` /
``windowWidth``, ``rows`` / ``columns`` (fit inside, aspect kept, capped at 4096),
``region`` (xmin,ymin,xmax,ymax as fractions), ``frameNumber``, ``imageQuality``,
``annotation`` and the ``preset`` extension; a multi-frame object asked for as
``image/gif`` without ``frameNumber`` is a cine loop. Like every instance-level
resource the answer carries an ETag and Last-Modified and honours conditional
requests.
"""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import QueryParams

from api.audit import audited
from api.auth import check_study
from api.dicomweb import rendered
from api.dicomweb.common import Reader
from api.dicomweb.negotiation import ANY, DICOM, EXPLICIT_VR_LITTLE_ENDIAN, parse_accept
from api.dicomweb.wado import (
    instance_etag,
    instance_payload,
    lookup,
    not_modified,
    validators,
)
from storage.header import is_valid_uid
from storage.retrieve import StoredInstance
from viewer.render import MediaType

router = APIRouter(tags=["wado-uri"])

_UID_PARAMETERS = (("studyUID", "study"), ("seriesUID", "series"), ("objectUID", "instance"))
_DICOM_RANGES = (DICOM, "application/*", "*/*")
_IMAGE_TYPES: tuple[MediaType, ...] = ("image/jpeg", "image/png", "image/gif", "image/webp")


@router.get("/wado", dependencies=[Depends(audited("retrieve"))])
async def wado(request: Request, principal: Reader) -> Response:
    """Retrieve one DICOM object, as a Part 10 file or a rendered image."""
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "requestType=WADO is required")
    uids: dict[str, str] = {}
    for parameter, name in _UID_PARAMETERS:
        value = params.get(parameter)
        if not value:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, "studyUID, seriesUID and objectUID are required"
            )
        if not is_valid_uid(value):
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, f"{parameter} {value[:80]!r} is not a UID"
            )
        uids[name] = value
    # The audit trail records UIDs from the path parameters; here they come in the query.
    request.path_params.update(uids)
    await check_study(request, principal, uids["study"])
    if params.get("anonymize", "").lower() == "yes":
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, "de-identified copies are not offered over WADO-URI"
        )
    requested_syntax = _requested_syntax(params.get("transferSyntax"))
    wanted = _content_types(params.get("contentType"))
    stored = (
        await run_in_threadpool(lookup, request, uids["study"], uids["series"], uids["instance"])
    )[0]
    media_type = _choose(wanted, stored.has_pixels)
    if media_type == DICOM:
        _check_accept(request, _DICOM_RANGES, "WADO-URI answers with application/dicom")
        return await run_in_threadpool(_dicom, request, stored, requested_syntax)
    request.state.audit_action = "render"
    return await _rendered(request, stored, cast(MediaType, media_type))


def _dicom(request: Request, stored: StoredInstance, requested_syntax: str) -> Response:
    if requested_syntax in (ANY, stored.transfer_syntax_uid):
        syntax = stored.transfer_syntax_uid
    elif requested_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        syntax = EXPLICIT_VR_LITTLE_ENDIAN
    else:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"the object is stored in {stored.transfer_syntax_uid}; it can be sent as stored "
            f"or in {EXPLICIT_VR_LITTLE_ENDIAN}, not in {requested_syntax}",
        )
    etag = instance_etag(stored, f"wado-uri;{syntax}")
    headers = validators(stored, etag)
    if not_modified(request, etag, stored.received_at):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    _, chunks = instance_payload(request.app.state.archive.blobs, stored, syntax)
    if isinstance(chunks, list):
        return Response(b"".join(chunks), media_type=DICOM, headers=headers)
    headers["Content-Length"] = str(stored.file_size)
    return StreamingResponse(chunks, media_type=DICOM, headers=headers)


async def _rendered(request: Request, stored: StoredInstance, media_type: MediaType) -> Response:
    params = request.query_params
    _check_accept(
        request,
        (media_type, "image/*", "*/*"),
        f"this object is answered as {media_type} (contentType); the Accept header refuses it",
    )
    asked = _asked(params)
    count = rendered.frame_count(stored)
    frame_text = params.get("frameNumber")
    if frame_text is None:
        frame, cine = 1, media_type == "image/gif" and count > 1
    else:
        text = frame_text.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) == 0:
            raise rendered.bad("frameNumber", frame_text, "a frame number, 1 or more")
        frame, cine = int(text), False
        rendered.check_frames(stored, [frame])
    job = rendered.make_job(request, stored, asked.params(media_type, frame, cine=cine))
    return await rendered.image_response(request, stored, [job])


def _asked(params: QueryParams) -> rendered.Asked:
    """The rendering parameters of PS3.18 §9.1.2 (and the ``preset`` extension)."""
    for unsupported in ("presentationUID", "presentationSeriesUID"):
        if params.get(unsupported):
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"{unsupported}: presentation states are not applied to rendered images",
            )
    window = rendered.window_from(
        rendered.single(params, "windowCenter"), rendered.single(params, "windowWidth")
    )
    preset = rendered.parse_preset(rendered.single(params, "preset"))
    if window is not None and preset is not None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "give either windowCenter/windowWidth or preset"
        )
    rows_text, columns_text = rendered.single(params, "rows"), rendered.single(params, "columns")
    rows = None if rows_text is None else rendered.parse_size(rows_text, "rows", rows_text)
    columns = (
        None if columns_text is None else rendered.parse_size(columns_text, "columns", columns_text)
    )
    viewport = None
    if rows is not None or columns is not None:
        viewport = (columns or rendered.MAX_VIEWPORT, rows or rendered.MAX_VIEWPORT)
    return rendered.Asked(
        window=window,
        preset=preset,
        viewport=viewport,
        region=rendered.parse_region(rendered.single(params, "region")),
        quality=rendered.parse_quality(rendered.single(params, "imageQuality"), "imageQuality"),
        annotation=rendered.parse_annotation(rendered.single(params, "annotation")),
    )


def _requested_syntax(value: str | None) -> str:
    if value is None or value == "":
        return EXPLICIT_VR_LITTLE_ENDIAN
    if value != ANY and not is_valid_uid(value):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"transferSyntax {value[:80]!r} is not a UID"
        )
    return value


def _content_types(value: str | None) -> list[str] | None:
    """The media types ``contentType`` lists, best first; ``None`` when absent."""
    if value is None or value.strip() == "":
        return None
    wanted: list[str] = []
    for media in parse_accept(value):
        if media.media_type in _DICOM_RANGES:
            wanted.append(DICOM)
        elif media.media_type in _IMAGE_TYPES:
            wanted.append(media.media_type)
        elif media.media_type == "image/*":
            wanted.append("image/jpeg")
    if not wanted:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"contentType {value[:80]!r} is not available: application/dicom, or for images "
            f"{', '.join(_IMAGE_TYPES)}",
        )
    return wanted


def _choose(wanted: list[str] | None, is_image: bool) -> str:
    """PS3.18 §9.1.2.1.5: absent, image/jpeg for images and application/dicom otherwise."""
    if wanted is None:
        return "image/jpeg" if is_image else DICOM
    for media_type in wanted:
        if media_type == DICOM or is_image:
            return media_type
    raise HTTPException(
        status.HTTP_406_NOT_ACCEPTABLE,
        "the object has no pixel data to render: ask for contentType=application/dicom",
    )


def _check_accept(request: Request, allowed: tuple[str, ...], message: str) -> None:
    ranges = parse_accept(request.headers.get("accept"))
    if not any(media.media_type in allowed for media in ranges):
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, message)
