"""What every DICOMweb route shares: who may read, DICOM JSON, compressed JSON bodies."""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from pydicom.datadict import dictionary_VR, tag_for_keyword

from api.auth import Principal, require_role
from storage.users import Role

DICOM_JSON = "application/dicom+json"
Reader = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.RADIOLOGIST, Role.REFERRING))]
Storer = Annotated[
    Principal, Depends(require_role(Role.ADMIN, Role.RADIOLOGIST, Role.MODALITY, storing=True))
]

_NUMERIC_VRS = {"IS", "US", "UL", "SS", "SL", "UV", "SV"}
_FLOAT_VRS = {"DS", "FL", "FD"}
_GZIP_MIN_BYTES = 1024


def json_element(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    """One DICOM JSON (PS3.18 F.2) attribute from an index value."""
    tag, vr = _tag_and_vr(keyword)
    element: dict[str, Any] = {"vr": vr}
    values = _values(value, vr)
    if values:
        element["Value"] = values
    return tag, element


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[str, str]:
    """Dictionary lookups, once per keyword: they were 40 % of a QIDO answer."""
    return f"{tag_for_keyword(keyword):08X}", str(dictionary_VR(keyword))


def _values(value: Any, vr: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    parts = str(value).split("\\")
    if vr == "PN":
        return [_person_name(p) for p in parts]
    if vr in _NUMERIC_VRS:
        return [int(float(p)) for p in parts if p.strip()]
    if vr in _FLOAT_VRS:
        return [float(p) for p in parts if p.strip()]
    return parts


def _person_name(value: str) -> dict[str, str]:
    groups = value.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: group for name, group in zip(names, groups, strict=False) if group}


def json_response(
    request: Request, payload: Any, headers: dict[str, str] | None = None
) -> Response:
    """A DICOM JSON response, gzipped when the client accepts it and it is worth it."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    out_headers = {"Vary": "Accept-Encoding", **(headers or {})}
    if len(body) >= _GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, compresslevel=5)
        out_headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=DICOM_JSON, headers=out_headers)


def dataset_json(items: Iterable[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    return dict(json_element(keyword, value) for keyword, value in items)


def origin(request: Request) -> str:
    """Where clients reach us, for the absolute URLs we hand out (RetrieveURL,
    BulkDataURI): ``PACS_PUBLIC_URL`` when set (behind a proxy), else the request's.

    dicomweb-client sends ``Host`` without the port; when the host it names is
    the very address the connection came in on, the port it meant is ours.
    """
    public = request.app.state.settings.public_url
    if public:
        return str(public).rstrip("/")
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server and server[0] == url.hostname:
        default = 443 if url.scheme == "https" else 80
        if server[1] not in (None, default):
            url = url.replace(port=server[1])
    return str(url).rstrip("/")
