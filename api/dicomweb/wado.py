"""WADO-RS (PS3.18 §10.4): retrieve instances, metadata, frames and bulk data.

Instances go out as ``multipart/related; type="application/dicom"``, one Part 10
file per part, each part labelled with its transfer syntax. The body streams:
files are read a chunk at a time, one at a time, so a study of any size goes
through in flat memory. ``transfer-syntax=*`` sends every file byte for byte as
stored; no transfer syntax (the PS3.18 default) or Explicit VR Little Endian
sends files already in it byte for byte and re-encodes the others, decompressing
their pixel data (lossy or undecodable ones, which PS3.18 lets an origin server
keep, go as stored and say so in their part's label).

Frames and bulk data are ``application/octet-stream`` (uncompressed, little
endian) unless the client accepts the stored compressed form, which OHIF does
with ``transfer-syntax=*``: each frame then goes out as its stored bitstream, in
a part labelled with the media type of PS3.18 Table 8.7.3-5 and its syntax
(``image/jls; transfer-syntax=1.2.840.10008.1.2.4.80``).

Instance-level resources carry a strong ``ETag`` (the file's SHA-256 and the
representation asked for) and ``Last-Modified`` (when it arrived), and answer
``If-None-Match`` / ``If-Modified-Since`` with 304. Their multipart boundary is
derived from the ETag, so the same representation is the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from itertools import chain

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse
from pydicom.uid import UID

from api.audit import audited
from api.dicomweb.common import DICOM_JSON, Reader, origin
from api.dicomweb.metadata import MetadataCache, read_instance_json
from api.dicomweb.negotiation import (
    DICOM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    NegotiationError,
    PixelChoice,
    accepts_json,
    choose_pixels,
    choose_syntax,
    dicom_offers,
    parse_accept,
    pixel_offers,
)
from api.dicomweb.transcode import (
    PIXEL_TAGS,
    StoredFile,
    TranscodeError,
    file_chunks,
    to_explicit_little_endian,
)
from storage.blobs import BlobStore
from storage.header import is_valid_uid
from storage.retrieve import StoredInstance, find_instances, series_version

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(audited("retrieve"))])

_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
_FRAME_LIST = re.compile(r"[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*")
_BULK_PATH = re.compile(r"[0-9A-Fa-f]{8}(/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,16}")
_MAX_FRAMES_PER_REQUEST = 10_000
_GZIP_MIN_BYTES = 1024
# Bump when the bytes of a representation change for the same file (new JSON, ...).
_REPRESENTATION_VERSION = "1"


# --- instances -------------------------------------------------------------------


@router.get("/studies/{study}")
def retrieve_study(request: Request, study: str, _: Reader) -> Response:
    return _retrieve(request, study)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(request: Request, study: str, series: str, _: Reader) -> Response:
    return _retrieve(request, study, series)


@router.get(_INSTANCE)
def retrieve_instance(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    return _retrieve(request, study, series, instance)


def _retrieve(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    check_uids(study, series, instance)
    try:
        offers = dicom_offers(parse_accept(request.headers.get("accept")))
    except NegotiationError as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from exc
    blobs: BlobStore = request.app.state.archive.blobs
    plan: list[tuple[StoredInstance, str]] = []
    single_part = False  # only one instance asked for as bare application/dicom
    for stored in lookup(request, study, series, instance):
        offer = choose_syntax(offers, stored.transfer_syntax_uid)
        if offer is None:
            raise HTTPException(
                status.HTTP_406_NOT_ACCEPTABLE,
                f"instance {stored.sop_instance_uid} is stored in "
                f"{_syntax_name(stored.transfer_syntax_uid)} and can be sent as stored "
                f"(transfer-syntax=*) or in {EXPLICIT_VR_LITTLE_ENDIAN}, not as asked",
            )
        if not blobs.exists(stored.blob_key):
            log.error("blob %s of %s is missing", stored.blob_key, stored.sop_instance_uid)
            raise HTTPException(
                status.HTTP_500_INTERNAL_SERVER_ERROR,
                f"the stored file of instance {stored.sop_instance_uid} is missing; "
                "an administrator should run `pacs check`",
            )
        plan.append((stored, offer.syntax))
        single_part = instance is not None and not offer.multipart
    headers: dict[str, str] = {"Vary": "Accept"}
    if instance is None:
        boundary = uuid.uuid4().hex
    else:
        stored, syntax = plan[0]
        etag = instance_etag(stored, f"dicom;{syntax};{'single' if single_part else 'multi'}")
        headers = validators(stored, etag)
        if not_modified(request, etag, stored.received_at):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        if single_part:
            return _single_instance(blobs, stored, syntax, headers)
        boundary = boundary_for(etag)
    body = Multipart(boundary)
    return StreamingResponse(
        body.stream(_instance_parts(blobs, plan)),
        media_type=body.content_type(DICOM),
        headers=headers,
    )


def _instance_parts(
    blobs: BlobStore, plan: list[tuple[StoredInstance, str]]
) -> Iterator[tuple[str, Iterable[bytes]]]:
    """(content type, body chunks) of each instance, opened one at a time."""
    for stored, syntax in plan:
        label, chunks = instance_payload(blobs, stored, syntax)
        yield f"{DICOM}; transfer-syntax={label}", chunks


def instance_payload(
    blobs: BlobStore, stored: StoredInstance, syntax: str
) -> tuple[str, Iterable[bytes]]:
    """The instance in ``syntax`` (its own or explicit LE): (actual syntax, chunks)."""
    if syntax == stored.transfer_syntax_uid:
        return syntax, file_chunks(blobs.open(stored.blob_key))
    with blobs.open(stored.blob_key) as fp:
        try:
            return syntax, [to_explicit_little_endian(fp)]
        except TranscodeError as exc:
            log.warning("sending %s as stored: %s", stored.sop_instance_uid, exc)
    return stored.transfer_syntax_uid, file_chunks(blobs.open(stored.blob_key))


def _single_instance(
    blobs: BlobStore, stored: StoredInstance, syntax: str, headers: dict[str, str]
) -> Response:
    label, chunks = instance_payload(blobs, stored, syntax)
    media_type = f"{DICOM}; transfer-syntax={label}"
    if isinstance(chunks, list):
        return Response(b"".join(chunks), media_type=media_type, headers=headers)
    headers = {**headers, "Content-Length": str(stored.file_size)}
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


# --- metadata ----------------------------------------------------------------------


@router.get("/studies/{study}/metadata")
def study_metadata(request: Request, study: str, _: Reader) -> Response:
    check_uids(study)
    _check_json_accept(request)
    instances = lookup(request, study)
    fragments = [_instance_fragment(request, stored) for stored in instances]
    return _json_bytes(request, _json_array(fragments), {"Vary": "Accept, Accept-Encoding"})


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(request: Request, study: str, series: str, _: Reader) -> Response:
    """OHIF calls this once per series: answered from a cache keyed on the series' content."""
    check_uids(study, series)
    _check_json_accept(request)
    with request.app.state.archive.sessions() as session:
        version = series_version(session, study, series)
    if version.count == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _not_found(study, series))
    cache = metadata_cache(request)
    gzipped = _wants_gzip(request)
    key = (study, series, origin(request), version.count, version.latest, version.last_id)
    digest = hashlib.sha256(repr((key, _REPRESENTATION_VERSION, gzipped)).encode()).hexdigest()
    headers = {"ETag": f'"{digest[:40]}"', "Cache-Control": "private, no-cache"}
    headers["Vary"] = "Accept, Accept-Encoding"
    if version.latest is not None:
        headers["Last-Modified"] = format_datetime(version.latest, usegmt=True)
    if not_modified(request, headers["ETag"], version.latest):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    body = cache.series_body(
        key,
        gzipped,
        lambda: _json_array(
            [_instance_fragment(request, s) for s in lookup(request, study, series)]
        ),
    )
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get(f"{_INSTANCE}/metadata")
def instance_metadata(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    check_uids(study, series, instance)
    _check_json_accept(request)
    stored = lookup(request, study, series, instance)[0]
    representation = f"metadata;{origin(request)};{_wants_gzip(request)}"
    etag = instance_etag(stored, representation)
    headers = {**validators(stored, etag), "Vary": "Accept, Accept-Encoding"}
    if not_modified(request, etag, stored.received_at):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return _json_bytes(request, _json_array([_instance_fragment(request, stored)]), headers)


def _instance_fragment(request: Request, stored: StoredInstance) -> bytes:
    """One instance's DICOM JSON object, serialized; cached by file hash."""
    cache = metadata_cache(request)
    base = origin(request)
    key = (stored.sop_instance_uid, stored.sha256, base)
    fragment = cache.instances.get(key)
    if fragment is None:
        bulk_base = (
            f"{base}/dicomweb/studies/{stored.study_instance_uid}"
            f"/series/{stored.series_instance_uid}"
            f"/instances/{stored.sop_instance_uid}/bulkdata"
        )
        payload = read_instance_json(
            request.app.state.archive.blobs.open(stored.blob_key), bulk_base
        )
        fragment = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        cache.instances.put(key, fragment)
    return fragment


def metadata_cache(request: Request) -> MetadataCache:
    """The application's metadata cache, made on first use."""
    state = request.app.state
    cache = getattr(state, "metadata_cache", None)
    if cache is None:
        cache = state.metadata_cache = MetadataCache()
    return cache


def _check_json_accept(request: Request) -> None:
    if not accepts_json(parse_accept(request.headers.get("accept"))):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, f"metadata is only available as {DICOM_JSON}"
        )


def _json_array(fragments: list[bytes]) -> bytes:
    return b"[" + b",".join(fragments) + b"]"


def _wants_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def _json_bytes(request: Request, body: bytes, headers: dict[str, str]) -> Response:
    if len(body) >= _GZIP_MIN_BYTES and _wants_gzip(request):
        body = gzip.compress(body, compresslevel=5)
        headers = {**headers, "Content-Encoding": "gzip"}
    return Response(body, media_type=DICOM_JSON, headers=headers)


# --- frames and bulk data -------------------------------------------------------------


@router.get(f"{_INSTANCE}/frames/{{frames}}")
def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frames: str, _: Reader
) -> Response:
    check_uids(study, series, instance)
    numbers = _frame_numbers(frames)
    stored = lookup(request, study, series, instance)[0]
    choice = _pixel_choice(request, stored)
    if not choice.multipart and len(numbers) != 1:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            "a single-part response holds one frame; accept multipart/related for more",
        )
    etag = instance_etag(stored, f"frames;{frames};{choice}")
    headers = validators(stored, etag)
    if not_modified(request, etag, stored.received_at):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    source = _open_pixels(request, stored)
    count = source.number_of_frames
    missing = [n for n in numbers if n > count]
    if missing:
        source.close()
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"instance {instance} has {count} frame{'s' if count > 1 else ''}; "
            f"there is no frame {missing[0]}",
        )
    indices = [n - 1 for n in numbers]
    chunks = source.encoded_frames(indices) if choice.encoded else source.native_frames(indices)
    return _pixel_response(source, chunks, choice, headers, boundary_for(etag))


@router.get(f"{_INSTANCE}/bulkdata/{{tags:path}}")
def retrieve_bulkdata(
    request: Request, study: str, series: str, instance: str, tags: str, _: Reader
) -> Response:
    """The value of a binary element named by a BulkDataURI of the metadata."""
    check_uids(study, series, instance)
    if not _BULK_PATH.fullmatch(tags):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"{tags!r} is not a bulk data path (tag, or tag/item/tag... in hexadecimal)",
        )
    path = [int(part, 16) if i % 2 == 0 else int(part) for i, part in enumerate(tags.split("/"))]
    stored = lookup(request, study, series, instance)[0]
    if len(path) == 1 and path[0] in PIXEL_TAGS:
        choice = _pixel_choice(request, stored)
    else:
        choice = _octet_stream_choice(request)
    etag = instance_etag(stored, f"bulkdata;{tags.upper()};{choice}")
    headers = validators(stored, etag)
    if not_modified(request, etag, stored.received_at):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    source = _open_pixels(request, stored, need_pixels=False)
    chunks: Iterator[bytes]
    if len(path) == 1 and path[0] in PIXEL_TAGS:
        if source.pixel is None or source.pixel.tag != path[0]:
            source.close()
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"instance {instance} has no {tags}")
        if choice.encoded:
            chunks = source.encoded_frames(list(range(source.number_of_frames)))
            if not choice.multipart and source.number_of_frames != 1:
                source.close()
                raise HTTPException(
                    status.HTTP_406_NOT_ACCEPTABLE,
                    "compressed pixel data of several frames needs multipart/related",
                )
            return _pixel_response(source, chunks, choice, headers, boundary_for(etag))
        return _one_part(source, source.native_pixel_data(), choice, headers, etag)
    try:
        value = source.element_bytes(path)
    except Exception:
        source.close()
        raise
    if value is None:
        source.close()
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"instance {instance} has no bulk data element {tags}"
        )
    return _one_part(source, iter([value]), choice, headers, etag)


def _pixel_choice(request: Request, stored: StoredInstance) -> PixelChoice:
    try:
        offers = pixel_offers(parse_accept(request.headers.get("accept")))
    except NegotiationError as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from exc
    if not stored.has_pixels:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"instance {stored.sop_instance_uid} has no pixel data"
        )
    choice = choose_pixels(offers, stored.transfer_syntax_uid)
    if choice is None:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"the pixel data is stored in {_syntax_name(stored.transfer_syntax_uid)}; it is "
            f"available uncompressed ({OCTET_STREAM}) or as stored (transfer-syntax=*)",
        )
    return choice


def _octet_stream_choice(request: Request) -> PixelChoice:
    try:
        offers = pixel_offers(parse_accept(request.headers.get("accept")))
    except NegotiationError as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from exc
    for offer in offers:
        if offer.media_type in (OCTET_STREAM, "application/*", "*/*"):
            return PixelChoice(False, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, offer.multipart)
    raise HTTPException(
        status.HTTP_406_NOT_ACCEPTABLE, f"this bulk data is only available as {OCTET_STREAM}"
    )


def _open_pixels(
    request: Request, stored: StoredInstance, *, need_pixels: bool = True
) -> StoredFile:
    try:
        source = StoredFile(request.app.state.archive.blobs.open(stored.blob_key))
    except FileNotFoundError as exc:
        log.error("blob %s of %s is missing", stored.blob_key, stored.sop_instance_uid)
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            f"the stored file of instance {stored.sop_instance_uid} is missing",
        ) from exc
    if need_pixels and source.pixel is None:
        source.close()
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"instance {stored.sop_instance_uid} has no pixel data"
        )
    return source


def _pixel_response(
    source: StoredFile,
    frames: Iterator[bytes],
    choice: PixelChoice,
    headers: dict[str, str],
    boundary: str,
) -> Response:
    """One part per frame (or the one frame as the whole body)."""
    frames = _started(frames, source)
    if not choice.multipart:
        with source:
            frame = b"".join(frames)
        return Response(frame, media_type=choice.content_type, headers=headers)
    body = Multipart(boundary)
    parts = ((choice.content_type, [frame]) for frame in frames)
    return StreamingResponse(
        _closing(body.stream(parts), source),
        media_type=body.content_type(choice.media_type),
        headers=headers,
    )


def _one_part(
    source: StoredFile,
    chunks: Iterator[bytes],
    choice: PixelChoice,
    headers: dict[str, str],
    etag: str,
) -> Response:
    """A whole value in one part (or as the whole body), streamed."""
    chunks = _started(chunks, source)
    content_type = choice.content_type
    if not choice.multipart:
        return StreamingResponse(_closing(chunks, source), media_type=content_type, headers=headers)
    body = Multipart(boundary_for(etag))
    return StreamingResponse(
        _closing(body.stream([(content_type, chunks)]), source),
        media_type=body.content_type(choice.media_type),
        headers=headers,
    )


def _started(chunks: Iterator[bytes], source: StoredFile) -> Iterator[bytes]:
    """Make the first piece before answering, so that a frame that cannot be decoded
    is a 406 with a reason rather than a response cut short."""
    try:
        first = next(chunks, b"")
    except TranscodeError as exc:
        source.close()
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, f"{exc}; ask for transfer-syntax=*"
        ) from exc
    except Exception:
        source.close()
        raise
    return chain([first], chunks)


def _closing(chunks: Iterable[bytes], source: StoredFile) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        source.close()


def _frame_numbers(frames: str) -> list[int]:
    if not _FRAME_LIST.fullmatch(frames):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"{frames[:80]!r} is not a frame list (1-based numbers separated by commas)",
        )
    numbers = [int(n) for n in frames.split(",")]
    if len(numbers) > _MAX_FRAMES_PER_REQUEST:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"at most {_MAX_FRAMES_PER_REQUEST} frames per request"
        )
    return numbers


# --- shared: lookups, validators, multipart --------------------------------------------


def check_uids(study: str, series: str | None = None, instance: str | None = None) -> None:
    for name, uid in (("study", study), ("series", series), ("instance", instance)):
        if uid is not None and not is_valid_uid(uid):
            message = f"{name} UID {uid[:80]!r} is not a UID"
            raise HTTPException(status.HTTP_400_BAD_REQUEST, message)


def lookup(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    """The instances named by the path, in viewing order; 404 when there are none."""
    with request.app.state.archive.sessions() as session:
        found = find_instances(session, study, series, instance)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _not_found(study, series, instance))
    return found


def _not_found(study: str, series: str | None = None, instance: str | None = None) -> str:
    if instance is not None:
        return f"no instance {instance} in series {series} of study {study}"
    if series is not None:
        return f"no series {series} in study {study}"
    return f"no study {study}"


def _syntax_name(syntax: str) -> str:
    name = UID(syntax).name if is_valid_uid(syntax) else ""
    return f"{syntax} ({name})" if name and name != syntax else syntax


def instance_etag(stored: StoredInstance, representation: str) -> str:
    """A strong validator: same file, same representation -> same bytes."""
    text = f"{stored.sha256}|{representation}|{_REPRESENTATION_VERSION}"
    return f'"{hashlib.sha256(text.encode()).hexdigest()[:40]}"'


def boundary_for(etag: str) -> str:
    return "pacs-" + etag.strip('"')


def validators(stored: StoredInstance, etag: str) -> dict[str, str]:
    return {
        "ETag": etag,
        "Last-Modified": format_datetime(stored.received_at, usegmt=True),
        "Cache-Control": "private, no-cache",
        "Vary": "Accept",
    }


def not_modified(request: Request, etag: str, modified: datetime | None) -> bool:
    """RFC 9110 §13.1: If-None-Match wins over If-Modified-Since."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        # weak comparison, as If-None-Match uses
        candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return etag in candidates
    since = request.headers.get("if-modified-since")
    if since and modified is not None:
        try:
            since_time = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        if since_time.tzinfo is None:
            return False
        return modified.replace(microsecond=0) <= since_time
    return False


class Multipart:
    """Writes a ``multipart/related`` body (RFC 2387) part by part."""

    def __init__(self, boundary: str) -> None:
        self.boundary = boundary

    def content_type(self, part_type: str) -> str:
        return f'multipart/related; type="{part_type}"; boundary={self.boundary}'

    def stream(self, parts: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
        delimiter = f"--{self.boundary}".encode("ascii")
        first = True
        for content_type, chunks in parts:
            lead = b"" if first else b"\r\n"
            yield lead + delimiter + f"\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
            yield from chunks
            first = False
        yield (b"" if first else b"\r\n") + delimiter + b"--\r\n"
