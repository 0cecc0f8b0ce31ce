"""WADO-URI (PS3.18 §9): ``GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``.

Only ``contentType=application/dicom`` is served here; rendered images
(``image/jpeg``, the default for images when contentType is absent) come with
the rendering service. ``transferSyntax`` picks the encoding: absent means
Explicit VR Little Endian (the PS3.18 default), ``*`` or the stored syntax means
the file byte for byte as stored. Like every instance-level resource the answer
carries an ETag and Last-Modified and honours conditional requests.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse

from api.audit import audited
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

router = APIRouter(tags=["wado-uri"])

_UID_PARAMETERS = (("studyUID", "study"), ("seriesUID", "series"), ("objectUID", "instance"))
_DICOM_RANGES = (DICOM, "application/*", "*/*")


@router.get("/wado", dependencies=[Depends(audited("retrieve"))])
def wado(request: Request, _: Reader) -> Response:
    """Retrieve one DICOM object, as a Part 10 file."""
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
    if params.get("anonymize", "").lower() == "yes":
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, "de-identified copies are not offered over WADO-URI"
        )
    requested_syntax = _requested_syntax(params.get("transferSyntax"))
    _check_accept(request)
    stored = lookup(request, uids["study"], uids["series"], uids["instance"])[0]
    _check_content_type(params.get("contentType"), stored.has_pixels)
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


def _requested_syntax(value: str | None) -> str:
    if value is None or value == "":
        return EXPLICIT_VR_LITTLE_ENDIAN
    if value != ANY and not is_valid_uid(value):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"transferSyntax {value[:80]!r} is not a UID"
        )
    return value


def _check_content_type(value: str | None, is_image: bool) -> None:
    if value is None or value.strip() == "":
        if not is_image:
            return
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            "rendered images (image/jpeg, the default for images) are not available yet; "
            "ask for contentType=application/dicom",
        )
    media_types = [part.split(";")[0].strip().lower() for part in value.split(",")]
    if not any(media in _DICOM_RANGES for media in media_types):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"contentType {value[:80]!r} is not available: only application/dicom is served "
            "(rendered images come with the rendering service)",
        )


def _check_accept(request: Request) -> None:
    ranges = parse_accept(request.headers.get("accept"))
    if not any(media.media_type in _DICOM_RANGES for media in ranges):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, "WADO-URI answers with application/dicom"
        )
