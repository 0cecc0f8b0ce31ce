"""Rendered images (PS3.18 §10.4 ``rendered``, §10.7 ``thumbnail``): what a browser shows.

Routes, below ``/dicomweb``:

- ``/studies/{study}/rendered``, ``/studies/{study}/series/{series}/rendered``:
  ``multipart/related`` with one image per instance (its first frame; every frame
  of a multi-frame instance when the type is ``image/gif``), in viewing order,
  rendered and sent one at a time;
- ``.../instances/{instance}/rendered``: one image; a multi-frame instance asked
  for as ``image/gif`` is a cine loop of all its frames, otherwise its first frame;
- ``.../instances/{instance}/frames/{frames}/rendered``: one image per frame (one
  frame: the image itself; several: ``multipart/related``);
- ``thumbnail`` at the same four levels: a small image (128 px unless ``viewport``
  says otherwise) of a representative frame: for a study, the middle instance of
  its first series with images; for a series, its middle instance; for an
  instance, its middle frame; for a frame list, the first frame named.

Media types (``Accept``, or the ``accept`` query parameter, PS3.18 §8.3.3.1):
``image/jpeg`` (the default, and what ``*/*`` and ``image/*`` get), ``image/png``,
``image/webp``, ``image/gif``; ``multipart/related; type="image/..."`` wraps
instance and frame answers in a multipart body. Anything else is a 406.

Query parameters (PS3.18 §8.3.5.1): ``window=center,width[,linear|linear-exact|
sigmoid]``, ``viewport=vw,vh`` or ``viewport=vw,vh,sx,sy,sw,sh`` (one of vw, vh may
be empty: the aspect ratio decides it; sizes above 4096 are capped),
``quality=1..100``, ``annotation=patient,technique``, and the extension
``preset=lung|mediastinum|bone|brain|stroke|abdomen|liver`` (not with ``window``).
A malformed value is a 400 that says what is wrong; a frame that does not exist is a
404 (as for WADO-RS frames); pixel data that cannot be decoded is a 422.

Caching: an instance never changes under its SHA-256, so an image is named by the
file's hash and the parameters that made it (:class:`api.render_pool.RenderJob`).
That name is the server-side cache key and, hashed, the strong ``ETag``, known
before rendering: ``If-None-Match`` gets a 304 without a render. Instance and frame
images may be reused by the browser for an hour (``Cache-Control: private,
max-age=3600``: private because they hold patient data); study and series
resources, whose content changes when instances arrive, and images with burned-in
annotations, are revalidated each time (``private, no-cache``) and cost a 304 when
nothing changed. Instance look-ups are remembered for 30 s (:class:`RecentInstances`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import QueryParams

from api.audit import audited
from api.dicomweb.common import Reader
from api.dicomweb.negotiation import parse_accept
from api.dicomweb.wado import (
    _frame_numbers,
    boundary_for,
    check_uids,
    instance_etag,
    lookup,
    not_modified,
    validators,
)
from api.render_pool import RendererCrashed, RenderJob, pool_for
from storage.retrieve import StoredInstance
from viewer.presets import PRESET_NAMES
from viewer.render import MediaType, RenderError, RenderParams, UndecodablePixels, Window

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(audited("render"))])

_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
JPEG: MediaType = "image/jpeg"
RENDERED_TYPES: tuple[MediaType, ...] = ("image/jpeg", "image/png", "image/webp", "image/gif")
VOI_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
ANNOTATIONS = frozenset({"patient", "technique"})
MAX_VIEWPORT = 4096  # larger sizes are capped to this
THUMBNAIL_SIZE = 128
MAX_FRAMES_RENDERED = 1000  # frames in one frames/{list}/rendered request
# Instances are immutable: their images may be reused for an hour without asking (a
# reading session; an instance replaced to correct it is seen within the hour).
# Study and series resources change when instances arrive, and burned-in patient
# text when demographics are corrected: always revalidate (a 304 is cheap).
BROWSER_SECONDS = 3600
LOOKUP_SECONDS = 30.0  # RecentInstances
IMMUTABLE = f"private, max-age={BROWSER_SECONDS}"
REVALIDATE = "private, no-cache"
UNDECODABLE = 422  # Unprocessable Content (its starlette name changed across versions)


@dataclass(frozen=True)
class Asked:
    """The rendering parameters of a request, checked, before any look-up."""

    window: Window | None = None
    preset: str | None = None
    viewport: tuple[int, int] | None = None
    source_rect: tuple[int, int, int, int] | None = None
    region: tuple[float, float, float, float] | None = None
    quality: int | None = None
    annotation: frozenset[str] = field(default_factory=frozenset)

    def params(self, media_type: MediaType, frame: int = 1, *, cine: bool = False) -> RenderParams:
        """:class:`RenderParams` for one frame (or, ``cine``, every frame) of an instance."""
        lossy = media_type in ("image/jpeg", "image/webp")
        quality = self.quality if self.quality is not None else RenderParams.quality
        return RenderParams(
            frame=frame,
            window=self.window,
            preset=self.preset,
            viewport=self.viewport,
            region=self.region,
            quality=quality if lossy else 0,  # lossless types do not depend on it
            media_type=media_type,
            annotation=self.annotation,
            all_frames=cine,
            source_rect=self.source_rect,
        )


# --- routes: rendered ----------------------------------------------------------------


@router.get("/studies/{study}/rendered")
async def study_rendered(request: Request, study: str, _: Reader) -> Response:
    return await _collection(request, study)


@router.get("/studies/{study}/series/{series}/rendered")
async def series_rendered(request: Request, study: str, series: str, _: Reader) -> Response:
    return await _collection(request, study, series)


@router.get(f"{_INSTANCE}/rendered")
async def instance_rendered(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    check_uids(study, series, instance)
    asked = rendered_query(request.query_params)
    media_type, multipart = negotiate(request)
    stored = await instance_lookup(request, study, series, instance)
    count = frame_count(stored)
    cine = media_type == "image/gif" and count > 1
    job = make_job(request, stored, asked.params(media_type, cine=cine))
    return await image_response(request, stored, [job], multipart=multipart)


@router.get(f"{_INSTANCE}/frames/{{frames}}/rendered")
async def frames_rendered(
    request: Request, study: str, series: str, instance: str, frames: str, _: Reader
) -> Response:
    check_uids(study, series, instance)
    numbers = _frame_numbers(frames)
    if len(numbers) > MAX_FRAMES_RENDERED:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"at most {MAX_FRAMES_RENDERED} frames per request"
        )
    asked = rendered_query(request.query_params)
    media_type, multipart = negotiate(request)
    stored = await instance_lookup(request, study, series, instance)
    check_frames(stored, numbers)
    jobs = [make_job(request, stored, asked.params(media_type, n)) for n in numbers]
    return await image_response(request, stored, jobs, multipart=multipart or len(jobs) > 1)


# --- routes: thumbnail ---------------------------------------------------------------


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(request: Request, study: str, _: Reader) -> Response:
    check_uids(study)
    return await _representative_thumbnail(request, study)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(request: Request, study: str, series: str, _: Reader) -> Response:
    check_uids(study, series)
    return await _representative_thumbnail(request, study, series)


@router.get(f"{_INSTANCE}/thumbnail")
async def instance_thumbnail(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    check_uids(study, series, instance)
    asked = thumbnail_query(request.query_params)
    media_type, multipart = negotiate(request)
    stored = await instance_lookup(request, study, series, instance)
    frame = (frame_count(stored) + 1) // 2
    job = make_job(request, stored, asked.params(media_type, frame))
    return await image_response(request, stored, [job], multipart=multipart)


@router.get(f"{_INSTANCE}/frames/{{frames}}/thumbnail")
async def frame_thumbnail(
    request: Request, study: str, series: str, instance: str, frames: str, _: Reader
) -> Response:
    check_uids(study, series, instance)
    numbers = _frame_numbers(frames)
    asked = thumbnail_query(request.query_params)
    media_type, multipart = negotiate(request)
    stored = await instance_lookup(request, study, series, instance)
    check_frames(stored, numbers[:1])
    job = make_job(request, stored, asked.params(media_type, numbers[0]))
    return await image_response(request, stored, [job], multipart=multipart)


async def _representative_thumbnail(
    request: Request, study: str, series: str | None = None
) -> Response:
    asked = thumbnail_query(request.query_params)
    media_type, multipart = negotiate(request)
    images = _images(await _lookup(request, study, series), study, series)
    first_series = [s for s in images if s.series_instance_uid == images[0].series_instance_uid]
    stored = first_series[len(first_series) // 2]
    frame = (frame_count(stored) + 1) // 2
    job = make_job(request, stored, asked.params(media_type, frame))
    return await image_response(
        request, stored, [job], multipart=multipart, cache_control=REVALIDATE
    )


# --- study and series: one part per instance ----------------------------------------


async def _collection(request: Request, study: str, series: str | None = None) -> Response:
    check_uids(study, series)
    asked = rendered_query(request.query_params)
    media_type, _ = negotiate(request)
    images = _images(await _lookup(request, study, series), study, series)
    jobs = [
        make_job(
            request,
            stored,
            asked.params(media_type, cine=media_type == "image/gif" and frame_count(stored) > 1),
        )
        for stored in images
    ]
    digest = hashlib.sha256("\n".join(job.key for job in jobs).encode()).hexdigest()
    etag = f'"{digest[:40]}"'
    headers = {"ETag": etag, "Cache-Control": REVALIDATE, "Vary": "Accept"}
    if not_modified(request, etag, None):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return await _multipart_response(request, jobs, media_type, boundary_for(etag), headers)


def _images(found: list[StoredInstance], study: str, series: str | None) -> list[StoredInstance]:
    images = [stored for stored in found if stored.has_pixels]
    if not images:
        where = f"series {series}" if series else f"study {study}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{where} has no images to render")
    return images


# --- shared with WADO-URI ---------------------------------------------------------------


async def _lookup(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    """:func:`api.dicomweb.wado.lookup` (a database query) off the event loop."""
    return await run_in_threadpool(lookup, request, study, series, instance)


class RecentInstances:
    """Instance look-ups remembered for :data:`LOOKUP_SECONDS`, a series at a time.

    The index query is most of the cost of a cached image (~0.7 ms of ~2 ms, and a
    thread hop), and a viewer asks for one slice after another of a series, and for
    the same ones again while a study is open (scrolling back and forth, thumbnails,
    prefetch). So the first look-up in a series also loads, in the background, every
    instance of that series (one query), and answers are remembered briefly. An
    instance deleted, or replaced under ``PACS_DUPLICATE_POLICY=replace``, may thus
    still be rendered for that long: far less than browsers keep the image itself
    (``Cache-Control``).
    """

    def __init__(self, seconds: float = 30.0, size: int = 50_000) -> None:
        self.seconds, self.size = seconds, size
        self._entries: OrderedDict[tuple[str, str, str], tuple[StoredInstance, float]] = (
            OrderedDict()
        )
        self._series: dict[tuple[str, str], float] = {}  # loading or loaded, until
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> StoredInstance | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._entries[key]
                return None
            return entry[0]

    def put(self, stored: StoredInstance, until: float | None = None) -> None:
        key = (stored.study_instance_uid, stored.series_instance_uid, stored.sop_instance_uid)
        with self._lock:
            self._entries[key] = (stored, until or time.monotonic() + self.seconds)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def load_series(self, request: Request, study: str, series: str) -> None:
        """Start loading every instance of a series, unless that is done or under way."""
        now = time.monotonic()
        with self._lock:
            if self._series.get((study, series), 0.0) > now:
                return
            if len(self._series) > 10_000:
                self._series = {k: v for k, v in self._series.items() if v > now}
            self._series[(study, series)] = now + self.seconds
        task = asyncio.get_running_loop().create_task(self._load(request, study, series))
        self._tasks.add(task)  # a reference, until it is done
        task.add_done_callback(self._tasks.discard)

    async def _load(self, request: Request, study: str, series: str) -> None:
        until = time.monotonic() + self.seconds
        try:
            found = await _lookup(request, study, series)
        except Exception as exc:  # a look-ahead only: the request itself is answered
            log.debug("series %s not remembered: %s", series, exc)
            return
        for stored in found[: self.size // 2]:
            self.put(stored, until)


async def instance_lookup(
    request: Request, study: str, series: str, instance: str
) -> StoredInstance:
    """One instance, from :class:`RecentInstances` or the index (404 when absent)."""
    state = request.app.state
    recent: RecentInstances | None = getattr(state, "render_lookups", None)
    if recent is None:
        recent = state.render_lookups = RecentInstances(LOOKUP_SECONDS)
    stored = recent.get((study, series, instance))
    if stored is None:
        stored = (await _lookup(request, study, series, instance))[0]
        recent.put(stored)
        recent.load_series(request, study, series)
    return stored


def frame_count(stored: StoredInstance) -> int:
    """Frames of an image instance (404 when it has no pixel data)."""
    if not stored.has_pixels:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"instance {stored.sop_instance_uid} has no pixel data to render",
        )
    return max(stored.number_of_frames or 1, 1)


def check_frames(stored: StoredInstance, numbers: Sequence[int]) -> None:
    """404 for a frame the instance does not have (as WADO-RS frames answers)."""
    count = frame_count(stored)
    missing = [n for n in numbers if n > count]
    if missing:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"instance {stored.sop_instance_uid} has {count} frame{'s' if count > 1 else ''}; "
            f"there is no frame {missing[0]}",
        )


def make_job(request: Request, stored: StoredInstance, params: RenderParams) -> RenderJob:
    source = request.app.state.archive.blobs.local_path(stored.blob_key)
    if source is None:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED, "rendering needs a blob store on the local disk"
        )
    return RenderJob(source, stored.sha256, params)


async def image_response(
    request: Request,
    stored: StoredInstance,
    jobs: list[RenderJob],
    *,
    multipart: bool = False,
    cache_control: str = IMMUTABLE,
) -> Response:
    """The image(s) of one instance, with validators; a 304 without rendering when the
    client holds them already."""
    representation = "\n".join(job.representation for job in jobs)
    etag = instance_etag(stored, f"{representation}\n{'multipart' if multipart else 'single'}")
    if any(job.params.annotation for job in jobs):
        cache_control = REVALIDATE  # burned-in text changes when the header is corrected
    headers = {**validators(stored, etag), "Cache-Control": cache_control}
    if not_modified(request, etag, stored.received_at):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    media_type = jobs[0].params.media_type
    if not multipart:
        body = await render_one(request, jobs[0])
        return Response(body, media_type=media_type, headers=headers)
    return await _multipart_response(request, jobs, media_type, boundary_for(etag), headers)


async def render_one(request: Request, job: RenderJob) -> bytes:
    """Render in the pool; the pipeline's errors as HTTP errors with their reason."""
    try:
        return await pool_for(request.app.state).render(job)
    except UndecodablePixels as exc:
        raise HTTPException(UNDECODABLE, f"the pixel data cannot be decoded: {exc}") from exc
    except RenderError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    except RendererCrashed as exc:
        raise HTTPException(
            UNDECODABLE,
            "the pixel data cannot be decoded: the decoder crashed on it",
        ) from exc
    except FileNotFoundError as exc:
        log.error("blob %s is missing", job.source)
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            "the stored file is missing; an administrator should run `pacs check`",
        ) from exc


async def _multipart_response(
    request: Request,
    jobs: list[RenderJob],
    media_type: MediaType,
    boundary: str,
    headers: dict[str, str],
) -> Response:
    """``multipart/related``, one image per job, rendered one at a time as the body
    goes out. The first is rendered before answering, so that an error (a bad
    window, undecodable pixels) is an error status; a later instance that fails is
    left out (and logged) rather than cutting the body short."""
    first = await render_one(request, jobs[0])

    async def bodies() -> AsyncIterator[bytes]:
        yield first
        for job in jobs[1:]:
            try:
                yield await render_one(request, job)
            except HTTPException as exc:
                log.warning("left %s out of a multipart rendering: %s", job.source, exc.detail)

    async def stream() -> AsyncIterator[bytes]:
        delimiter = f"--{boundary}".encode("ascii")
        part_head = f"\r\nContent-Type: {media_type}\r\n\r\n".encode("ascii")
        lead = b""
        async for body in bodies():
            yield lead + delimiter + part_head + body
            lead = b"\r\n"
        yield lead + delimiter + b"--\r\n"

    content_type = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return StreamingResponse(stream(), media_type=content_type, headers=headers)


# --- negotiation and query parameters ---------------------------------------------------


def negotiate(request: Request) -> tuple[MediaType, bool]:
    """(media type, multipart?) from the ``accept`` query parameter or header."""
    accept = request.query_params.get("accept") or request.headers.get("accept")
    for media in parse_accept(accept):
        kind, multipart = media.media_type, False
        if kind in ("multipart/related", "multipart/*"):
            kind, multipart = media.params.get("type", JPEG).lower(), True
        if kind in RENDERED_TYPES:
            return cast(MediaType, kind), multipart
        if kind in ("image/*", "*/*"):
            return JPEG, multipart
    raise HTTPException(
        status.HTTP_406_NOT_ACCEPTABLE,
        f"rendered images are available as {', '.join(RENDERED_TYPES)} "
        f'(or multipart/related; type="image/...")',
    )


def rendered_query(query: QueryParams) -> Asked:
    """The ``rendered`` query parameters of PS3.18 §8.3.5.1 and ``preset``; 400 when
    malformed. Parameters this resource does not define are ignored."""
    window = parse_window(single(query, "window"))
    preset = parse_preset(single(query, "preset"))
    if window is not None and preset is not None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "give either window or preset, not both")
    viewport, source_rect = parse_viewport(single(query, "viewport"))
    return Asked(
        window=window,
        preset=preset,
        viewport=viewport,
        source_rect=source_rect,
        quality=parse_quality(single(query, "quality"), "quality"),
        annotation=parse_annotation(single(query, "annotation")),
    )


def thumbnail_query(query: QueryParams) -> Asked:
    """Thumbnails take ``viewport`` (PS3.18 §10.7.1.2); 128 px when absent."""
    viewport, source_rect = parse_viewport(single(query, "viewport"))
    return Asked(viewport=viewport or (THUMBNAIL_SIZE, THUMBNAIL_SIZE), source_rect=source_rect)


def single(query: QueryParams, name: str) -> str | None:
    values = query.getlist(name)
    if len(values) > 1:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{name} is given more than once")
    return values[0] if values else None


def bad(name: str, value: str, expected: str) -> HTTPException:
    return HTTPException(
        status.HTTP_400_BAD_REQUEST, f"{name}={value[:80]!r} is not valid: {expected}"
    )


def parse_window(value: str | None) -> Window | None:
    if value is None:
        return None
    expected = "center,width[,linear|linear-exact|sigmoid] with width > 0"
    parts = [part.strip() for part in value.split(",")]
    if len(parts) not in (2, 3):
        raise bad("window", value, expected)
    center, width = parse_number(parts[0]), parse_number(parts[1])
    if center is None or width is None:
        raise bad("window", value, expected)
    function = "LINEAR"
    if len(parts) == 3:
        function = VOI_FUNCTIONS.get(parts[2].lower().replace("_", "-"), "")
    if not function:
        raise bad("window", value, f"the function is one of {', '.join(VOI_FUNCTIONS)}")
    if width <= 0:
        raise bad("window", value, "the width must be greater than 0")
    if function == "LINEAR" and width < 1:
        raise bad("window", value, "a linear window is at least 1 wide (PS3.3 C.11.2.1.2)")
    return Window(center, width, function)  # type: ignore[arg-type]


def window_from(center: str | None, width: str | None) -> Window | None:
    """WADO-URI's windowCenter / windowWidth: both or neither."""
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "windowCenter and windowWidth go together")
    return parse_window(f"{center},{width}")


def parse_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and abs(number) < 1e9 else None


def parse_preset(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip().lower()
    if name not in PRESET_NAMES:
        raise bad("preset", value, f"one of {', '.join(PRESET_NAMES)}")
    return name


def parse_size(text: str, name: str, value: str) -> int | None:
    """One viewport dimension: a positive integer (capped), or empty."""
    text = text.strip()
    if text == "":
        return None
    # isascii: "²".isdigit() is true, and int() refuses it.
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) == 0:
        raise bad(name, value, "sizes are whole numbers of pixels, greater than 0")
    return min(int(text), MAX_VIEWPORT)


def parse_viewport(
    value: str | None,
) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh``: (fit-inside size, source rectangle)."""
    if value is None:
        return None, None
    parts = value.split(",")
    if len(parts) not in (2, 6):
        raise bad("viewport", value, "vw,vh or vw,vh,sx,sy,sw,sh")
    width, height = (parse_size(part, "viewport", value) for part in parts[:2])
    if width is None and height is None:
        raise bad("viewport", value, "give vw, vh or both")
    viewport = (width or MAX_VIEWPORT, height or MAX_VIEWPORT)
    if len(parts) == 2:
        return viewport, None
    rect: list[int] = []
    for index, part in enumerate(parts[2:]):
        text = part.strip()
        if text.startswith("-"):
            raise bad("viewport", value, "flipping (a negative sw or sh) is not supported")
        if (
            not (text.isascii() and text.isdigit())
            or len(text) > 9
            or (index >= 2 and int(text) == 0)
        ):
            raise bad("viewport", value, "sx,sy,sw,sh are whole pixels, sw and sh > 0")
        rect.append(int(text))
    return viewport, (rect[0], rect[1], rect[2], rect[3])


def parse_quality(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 3 or not 1 <= int(text) <= 100:
        raise bad(name, value, "a whole number from 1 to 100")
    return int(text)


def parse_annotation(value: str | None) -> frozenset[str]:
    if value is None or value.strip() == "":
        return frozenset()
    items = {item.strip().lower() for item in value.split(",")}
    if not items <= ANNOTATIONS:
        raise bad("annotation", value, f"a list of {', '.join(sorted(ANNOTATIONS))}")
    return frozenset(items)


def parse_region(value: str | None) -> tuple[float, float, float, float] | None:
    """WADO-URI ``region=xmin,ymin,xmax,ymax``: fractions of the image, 0 to 1."""
    if value is None:
        return None
    expected = "xmin,ymin,xmax,ymax, fractions from 0 to 1 with min < max"
    numbers = [parse_number(part.strip()) for part in value.split(",")]
    if len(numbers) != 4 or any(n is None or not 0 <= n <= 1 for n in numbers):
        raise bad("region", value, expected)
    xmin, ymin, xmax, ymax = (cast(float, n) for n in numbers)
    if not (xmin < xmax and ymin < ymax):
        raise bad("region", value, expected)
    return (xmin, ymin, xmax, ymax)
