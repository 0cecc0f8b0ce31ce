"""Rendered images over HTTP: DICOMweb ``rendered`` / ``thumbnail`` and WADO-URI ``image/*``.

What the HTTP side promises, checked against the real pipeline (viewer/render.py;
its grey levels are compared with DCMTK elsewhere): every route and media type
answers an image Pillow decodes at the size asked for; parameters are checked and a
malformed one is a 400 that says why; ETags are known before rendering (a 304
renders nothing) and stable across restarts; the cache keeps the bytes under its
cap; undecodable pixels are a 422 and the server goes on serving; a render in
progress does not hold up anything else; every request leaves an audit row.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid
from sqlalchemy import select

import viewer.render
from api.app import create_app
from api.dicomweb import rendered
from api.render_pool import RenderPool, pool_for
from pacs.settings import Settings
from storage import Archive
from storage.models import AuditEvent
from storage.users import Role, create_user
from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server
from viewer.cache import RenderCache

AUTH = ("admin", "admin-password")


@dataclass(frozen=True)
class Item:
    study: str
    series: str
    instance: str

    @property
    def url(self) -> str:
        return f"/dicomweb/studies/{self.study}/series/{self.series}/instances/{self.instance}"

    @property
    def wado(self) -> str:
        return (
            f"/wado?requestType=WADO&studyUID={self.study}&seriesUID={self.series}"
            f"&objectUID={self.instance}"
        )


def item_of(path: Path) -> Item:
    ds = dcmread(path, stop_before_pixels=True)
    return Item(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


CT_FILES = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))
CT = item_of(CT_FILES[0])  # 256x256 signed 16-bit, 24 slices, one series
CT_MIDDLE = item_of(CT_FILES[len(CT_FILES) // 2])
MR = item_of(sorted((SAMPLES / "mr_brain").rglob("*.dcm"))[0])  # JPEG-LS
XA = item_of(next((SAMPLES / "xa_coronary").rglob("*.dcm")))  # 30 frames, JPEG 2000


def fresh_copy(source: Path, target: Path, garble: bool = False) -> Item:
    """``source`` under new UIDs; ``garble``: its compressed frame replaced by junk."""
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if garble:
        ds.PixelData = encapsulate([b"\xff\xd8\xff" + bytes(range(256)) * 4])
    ds.save_as(target, enforce_file_format=True)
    return item_of(target)


@pytest.fixture
def samples(archive: Archive, tmp_path: Path) -> dict[str, Item]:
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "ct-room", "modality-pass", Role.MODALITY)
        session.commit()
    for path in sorted(SAMPLES.rglob("*.dcm")):
        assert archive.ingest(path).ok, path
    mr_slice = sorted((SAMPLES / "mr_brain").rglob("*.dcm"))[0]
    sources = {
        # a JPEG-LS slice whose compressed frame is junk, and a 12-bit lossy JPEG
        # that no installed decoder reads
        "garbled": (mr_slice, True),
        "undecodable": (Path(str(get_testdata_file("JPEG-lossy.dcm"))), False),
        "no-pixels": (Path(str(get_testdata_file("rtplan.dcm"))), False),
    }
    extra: dict[str, Item] = {}
    for name, (source, garble) in sources.items():
        target = tmp_path / f"{name}.dcm"
        extra[name] = fresh_copy(source, target, garble)
        assert archive.ingest(target).ok, name
    return {"ct": CT, "mr": MR, "xa": XA, **extra}


@pytest.fixture
def client(archive: Archive, samples: dict[str, Item]) -> Iterator[TestClient]:
    # one portal, one event loop for the whole test: concurrency is real
    with TestClient(create_app(archive)) as test_client:
        test_client.auth = AUTH
        yield test_client


def image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(content type, body) of each part of a multipart/related answer."""
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    out = []
    for chunk in response.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        out.append((head.decode().split(":", 1)[1].strip(), body.removesuffix(b"\r\n")))
    assert response.content.rstrip().endswith(b"--" + boundary + b"--")
    return out


# --- routes and media types ----------------------------------------------------------


def test_instance_and_frame_in_every_media_type(client: TestClient) -> None:
    formats = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}
    for url in (f"{CT.url}/rendered", f"{CT.url}/frames/1/rendered"):
        for accept, expected in {**formats, "*/*": "JPEG", "image/*": "JPEG", "": "JPEG"}.items():
            response = client.get(url, headers={"accept": accept} if accept else {})
            picture = image(response)
            assert picture.format == expected, (url, accept)
            assert picture.size == (256, 256)
            # greyscale stays greyscale: 8-bit L (GIF: a palette; lossy WebP: grey RGB)
            assert picture.mode == {"GIF": "P", "WEBP": "RGB"}.get(expected, "L")
            assert picture.convert("RGB").getextrema()[0] == picture.convert("L").getextrema()
            media = "image/jpeg" if accept in ("*/*", "image/*", "") else accept
            assert response.headers["content-type"] == media
            assert response.headers["etag"].startswith('"')
            assert response.headers["cache-control"] == "private, max-age=3600"
            assert response.headers["vary"] == "Accept"
            assert "last-modified" in response.headers
    # the accept query parameter (PS3.18 §8.3.3.1) instead of the header
    assert image(client.get(f"{CT.url}/rendered?accept=image/png")).format == "PNG"
    # a quality ordering in Accept is honoured
    best = client.get(f"{CT.url}/rendered", headers={"accept": "image/jpeg;q=0.5, image/png"})
    assert best.headers["content-type"] == "image/png"
    # multipart/related of one image, when asked for
    wrapped = client.get(
        f"{CT.url}/rendered", headers={"accept": 'multipart/related; type="image/png"'}
    )
    [(content_type, body)] = parts(wrapped)
    assert content_type == "image/png" and Image.open(io.BytesIO(body)).size == (256, 256)
    # compressed sources: JPEG-LS MR, JPEG 2000 XA frame
    assert image(client.get(f"{MR.url}/rendered")).size == (256, 256)
    assert image(client.get(f"{XA.url}/frames/7/rendered")).size == (256, 256)


def test_multiframe_gif_is_a_cine_loop(client: TestClient) -> None:
    cine = image(client.get(f"{XA.url}/rendered", headers={"accept": "image/gif"}))
    assert cine.format == "GIF" and cine.n_frames == 30 and cine.size == (256, 256)
    still = image(client.get(f"{XA.url}/rendered"))  # JPEG: the first frame
    assert still.format == "JPEG" and getattr(still, "n_frames", 1) == 1
    one = image(client.get(f"{XA.url}/frames/3/rendered", headers={"accept": "image/gif"}))
    assert one.n_frames == 1
    frames = parts(client.get(f"{XA.url}/frames/1,15,30/rendered"))
    assert [content_type for content_type, _ in frames] == ["image/jpeg"] * 3
    first, middle, last = (Image.open(io.BytesIO(body)).tobytes() for _, body in frames)
    assert first != middle != last  # the vessels fill with contrast
    assert frames[0][1] == client.get(f"{XA.url}/frames/1/rendered").content


def test_study_and_series_rendered(client: TestClient) -> None:
    ct_series = parts(client.get(f"/dicomweb/studies/{CT.study}/series/{CT.series}/rendered"))
    assert len(ct_series) == len(CT_FILES)
    assert all(ct == "image/jpeg" for ct, _ in ct_series)
    assert ct_series[0][1] == client.get(f"{CT.url}/rendered").content  # viewing order
    study = client.get(f"/dicomweb/studies/{XA.study}/rendered", headers={"accept": "image/gif"})
    [(content_type, body)] = parts(study)
    assert content_type == "image/gif" and Image.open(io.BytesIO(body)).n_frames == 30
    assert study.headers["cache-control"] == "private, no-cache"
    again = client.get(
        f"/dicomweb/studies/{XA.study}/rendered",
        headers={"accept": "image/gif", "if-none-match": study.headers["etag"]},
    )
    assert again.status_code == 304


def test_thumbnails(client: TestClient) -> None:
    study = client.get(f"/dicomweb/studies/{CT.study}/thumbnail")
    assert image(study).size == (128, 128)
    # the study's (and its one series') thumbnail: the middle instance of its first series
    middle = client.get(f"{CT_MIDDLE.url}/thumbnail")
    assert study.content == middle.content
    series = client.get(f"/dicomweb/studies/{CT.study}/series/{CT.series}/thumbnail")
    assert series.content == middle.content
    assert study.headers["cache-control"] == "private, no-cache"
    assert middle.headers["cache-control"] == "private, max-age=3600"
    small = client.get(f"{CT.url}/thumbnail?viewport=64,64")
    assert image(small).size == (64, 64)
    assert image(client.get(f"{XA.url}/frames/30/thumbnail", headers={"accept": "image/png"}))
    xa = image(client.get(f"{XA.url}/thumbnail", headers={"accept": "image/gif"}))
    assert xa.size == (128, 128) and xa.n_frames == 1  # a thumbnail is never a loop
    assert image(client.get(f"/dicomweb/studies/{XA.study}/thumbnail?viewport=32,32")).size == (
        32,
        32,
    )
    # thumbnails ignore the rendered-only parameters
    assert client.get(f"{CT.url}/thumbnail?window=1,0").status_code == 200


# --- parameters -------------------------------------------------------------------------


def test_parameters(client: TestClient) -> None:
    url = f"{CT.url}/rendered"
    default = image(client.get(url))
    # the file's own window (40/400) by default; a window or preset changes the grey levels
    soft = image(client.get(f"{url}?window=40,400"))
    lung = image(client.get(f"{url}?window=-600,1500,linear"))
    assert _mean(lung) != _mean(soft)
    assert abs(_mean(default) - _mean(soft)) < 2
    assert image(client.get(f"{url}?preset=lung")).size == (256, 256)
    assert _mean(image(client.get(f"{url}?preset=LUNG"))) == pytest.approx(_mean(lung), abs=3)
    for function in ("linear-exact", "sigmoid", "LINEAR_EXACT"):
        assert image(client.get(f"{url}?window=40,400,{function}")).size == (256, 256)
    assert image(client.get(f"{url}?window=40,0.5,linear-exact")).mode == "L"
    # viewport: fit inside, aspect kept; huge sizes capped; one side may be left out
    assert image(client.get(f"{url}?viewport=64,64")).size == (64, 64)
    assert image(client.get(f"{url}?viewport=100,50")).size == (50, 50)
    assert image(client.get(f"{url}?viewport=999999999,10")).size == (10, 10)
    assert image(client.get(f"{url}?viewport=32,")).size == (32, 32)
    crop = image(client.get(f"{url}?viewport=64,64,64,64,128,128"))
    assert crop.size == (64, 64)
    assert crop.tobytes() != image(client.get(f"{url}?viewport=64,64")).tobytes()
    # quality: fewer bytes when lower; PNG does not depend on it (same ETag)
    low, high = client.get(f"{url}?quality=10"), client.get(f"{url}?quality=95")
    assert len(low.content) < len(high.content)
    png = {"accept": "image/png"}
    assert (
        client.get(f"{url}?quality=10", headers=png).headers["etag"]
        == client.get(f"{url}?quality=95", headers=png).headers["etag"]
    )
    annotated = client.get(f"{url}?annotation=patient,technique")
    assert image(annotated).size == (256, 256)
    assert annotated.headers["etag"] != client.get(url).headers["etag"]
    # parameters this resource does not define are ignored (cache busters, charset)
    assert client.get(f"{url}?_=12345&charset=utf-8").status_code == 200


def _mean(picture: Image.Image) -> float:
    data = picture.convert("L").tobytes()
    return sum(data) / len(data)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bad_input(client: TestClient, samples: dict[str, Item]) -> None:
    url = f"{CT.url}/rendered"
    cases: dict[str, tuple[int, str]] = {
        f"{url}?window=40,0": (400, "greater than 0"),
        f"{url}?window=40,-5": (400, "greater than 0"),
        f"{url}?window=40,0.5": (400, "at least 1"),
        f"{url}?window=a,b": (400, "center,width"),
        f"{url}?window=40": (400, "center,width"),
        f"{url}?window=40,400,cubic": (400, "linear"),
        f"{url}?window=nan,400": (400, "window"),
        f"{url}?window=40,400&window=50,400": (400, "more than once"),
        f"{url}?window=40,400&preset=lung": (400, "not both"),
        f"{url}?preset=kidney": (400, "lung"),
        f"{url}?viewport=0,0": (400, "greater than 0"),
        f"{url}?viewport=-5,10": (400, "viewport"),
        f"{url}?viewport=abc": (400, "vw,vh"),
        f"{url}?viewport=10,10,0,0": (400, "vw,vh"),
        f"{url}?viewport=,": (400, "vw, vh"),
        f"{url}?viewport=64,64,0,0,-256,256": (400, "flipping"),
        f"{url}?viewport=64,64,200,200,100,100": (400, "not inside"),
        f"{url}?quality=0": (400, "1 to 100"),
        f"{url}?quality=101": (400, "1 to 100"),
        f"{url}?quality=high": (400, "1 to 100"),
        f"{url}?annotation=age": (400, "patient"),
        f"{CT.url}/thumbnail?viewport=0,64": (400, "greater than 0"),
        f"{CT.url}/frames/2/rendered": (404, "there is no frame 2"),
        f"{XA.url}/frames/31/rendered": (404, "30 frames"),
        f"{XA.url}/frames/1,99/rendered": (404, "no frame 99"),
        f"{XA.url}/frames/99/thumbnail": (404, "no frame 99"),
        f"{XA.url}/frames/0/rendered": (400, "frame list"),
        f"{XA.url}/frames/1,x/rendered": (400, "frame list"),
        f"/dicomweb/studies/1.2.3/series/{CT.series}/instances/{CT.instance}/rendered": (
            404,
            "no instance",
        ),
        f"/dicomweb/studies/{CT.study}/series/x/instances/{CT.instance}/rendered": (
            400,
            "not a UID",
        ),
        "/dicomweb/studies/1.2.3/rendered": (404, "no study"),
        "/dicomweb/studies/1.2.3/thumbnail": (404, "no study"),
        f"{samples['no-pixels'].url}/rendered": (404, "no pixel data"),
        f"/dicomweb/studies/{samples['no-pixels'].study}/thumbnail": (404, "no images"),
        f"/dicomweb/studies/{samples['no-pixels'].study}/rendered": (404, "no images"),
    }
    for target, (expected, message) in cases.items():
        response = client.get(target)
        assert response.status_code == expected, (target, response.text)
        assert message in response.json()["detail"], (target, response.text)
    for accept in ("application/dicom", "image/tiff", "text/html", "video/mp4"):
        response = client.get(url, headers={"accept": accept})
        assert response.status_code == 406 and "image/jpeg" in response.json()["detail"]
    assert client.get(url, auth=None).status_code == 401
    assert client.get(url, auth=("ct-room", "modality-pass")).status_code == 403
    assert client.get(url).status_code == 200  # and nothing above broke anything


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_undecodable_pixels_are_422_and_the_server_goes_on(
    client: TestClient, samples: dict[str, Item]
) -> None:
    for name in ("garbled", "undecodable"):
        for url in (
            f"{samples[name].url}/rendered",
            f"{samples[name].url}/thumbnail",
            f"/dicomweb/studies/{samples[name].study}/rendered",
        ):
            response = client.get(url)
            assert response.status_code == 422, (url, response.text)
            assert "cannot be decoded" in response.json()["detail"]
        assert image(client.get(f"{CT.url}/rendered?viewport=50,50")).size == (50, 50)
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_process_pool_renders_the_same(
    archive: Archive, client: TestClient, samples: dict[str, Item]
) -> None:
    settings = Settings(render_pool="process", render_workers=1)
    with TestClient(create_app(archive, settings)) as processes:
        processes.auth = AUTH
        try:
            for url in (f"{CT.url}/rendered", f"{XA.url}/frames/4/rendered?viewport=64,64"):
                assert processes.get(url).content == client.get(url).content
            assert processes.get(f"{samples['garbled'].url}/rendered").status_code == 422
            assert image(processes.get(f"{MR.url}/rendered")).size == (256, 256)
        finally:
            pool_for(processes.app.state).close()  # type: ignore[attr-defined]


# --- caching, ETags, 304 -------------------------------------------------------------------


def test_etags_cache_and_304_without_rendering(
    client: TestClient, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[viewer.render.RenderParams] = []
    real = viewer.render.render

    def counting(source: Path, params: viewer.render.RenderParams) -> viewer.render.RenderedImage:
        calls.append(params)
        return real(source, params)

    monkeypatch.setattr(viewer.render, "render", counting)
    url = f"{CT.url}/rendered?window=-600,1500"
    first = client.get(url)
    etag = first.headers["etag"]
    assert first.status_code == 200 and len(calls) == 1
    assert client.get(url).content == first.content and len(calls) == 1  # from the cache
    for conditional in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = client.get(url, headers={"if-none-match": conditional})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
    assert client.get(url, headers={"if-none-match": '"other"'}).status_code == 200
    # a 304 needs no render even when the image is not in the cache (a restarted server)
    with TestClient(create_app(archive)) as fresh:
        fresh.auth = AUTH
        revalidated = fresh.get(url, headers={"if-none-match": etag})
        assert revalidated.status_code == 304 and len(calls) == 1
        assert fresh.get(url).headers["etag"] == etag  # the same name after a restart
        assert len(calls) == 2
    # every parameter and the media type are part of the name
    etags = {
        client.get(f"{CT.url}/rendered{query}", headers=headers).headers["etag"]
        for query, headers in (
            ("", {}),
            ("?window=-600,1500", {}),
            ("?window=-600,1500,sigmoid", {}),
            ("?viewport=64,64", {}),
            ("?quality=50", {}),
            ("", {"accept": "image/png"}),
            ("", {"accept": 'multipart/related; type="image/jpeg"'}),
        )
    }
    assert len(etags) == 7
    assert (
        client.get(f"{CT.url}/frames/1/rendered").headers["etag"]
        == client.get(f"{CT.url}/rendered").headers["etag"]
    )


def test_cache_is_capped(archive: Archive, samples: dict[str, Item]) -> None:
    cache = RenderCache(1000)
    for index in range(50):
        assert cache.put(index, bytes(100))
    assert len(cache) == 10 and cache.stats().bytes == 1000
    assert cache.get(0) is None and cache.get(49) is not None  # least recently used out
    assert cache.get(40) is not None
    cache.put(50, bytes(100))
    assert cache.get(40) is not None and cache.get(41) is None
    assert not cache.put("too big", bytes(126))  # more than an eighth of the cap
    settings = Settings(render_cache_bytes=20_000, render_workers=1)
    with TestClient(create_app(archive, settings)) as client:
        client.auth = AUTH
        for size in range(24, 64):  # small JPEGs, each well under 20,000 / 8 bytes
            assert client.get(f"{CT.url}/rendered?viewport={size},{size}").status_code == 200
        stats = pool_for(client.app.state).cache.stats()  # type: ignore[attr-defined]
        assert 0 < stats.bytes <= 20_000 and 0 < stats.entries < 40


def test_instance_lookups_are_remembered_a_series_at_a_time(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str | None, ...]] = []
    answered: list[tuple[str | None, ...]] = []
    real = rendered._lookup

    async def counting(
        request: Any, study: str, series: str | None = None, instance: str | None = None
    ) -> list[Any]:
        asked.append((study, series, instance))
        found = await real(request, study, series, instance)
        answered.append((study, series, instance))
        return found

    monkeypatch.setattr(rendered, "_lookup", counting)
    first = client.get(f"{CT.url}/rendered?viewport=32,32")
    assert first.status_code == 200
    deadline = time.monotonic() + 10
    while len(answered) < 2 and time.monotonic() < deadline:  # the series loads meanwhile
        time.sleep(0.02)
    assert asked == [(CT.study, CT.series, CT.instance), (CT.study, CT.series, None)]
    for path in CT_FILES[1:]:
        assert client.get(f"{item_of(path).url}/rendered?viewport=32,32").status_code == 200
    assert len(asked) == 2  # every other slice of the series without asking the index
    stranger = CT.url.replace(CT.instance, "1.2.3.4")
    assert client.get(f"{stranger}/rendered").status_code == 404  # and absent ones still 404


# --- the pool: a slow render stalls nothing else --------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_slow_render_does_not_stall_other_requests(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool: RenderPool = pool_for(client.app.state)  # type: ignore[attr-defined]
    real = viewer.render.render
    inside, release = threading.Semaphore(0), threading.Event()

    def slow(source: Path, params: viewer.render.RenderParams) -> viewer.render.RenderedImage:
        if params.viewport and params.viewport[0] == 77:
            inside.release()
            release.wait(20)
        return real(source, params)

    monkeypatch.setattr(viewer.render, "render", slow)
    cached = client.get(f"{CT.url}/rendered")
    with ThreadPoolExecutor(pool.workers + 2) as threads:
        try:
            # every worker busy with a slow render (and one more waiting for a worker)
            slow_ones = [
                threads.submit(client.get, f"{CT.url}/rendered?viewport=77,{77 + n}")
                for n in range(pool.workers + 1)
            ]
            for _ in range(pool.workers):
                assert inside.acquire(timeout=10), "the slow renders did not start"
            for target, headers in (
                ("/healthz", {}),
                (f"{CT.url}/rendered", {}),  # cached: no worker needed
                (f"{CT.url}/rendered", {"if-none-match": cached.headers["etag"]}),
                (f"/dicomweb/studies/{CT.study}/series", {}),
            ):
                started = time.perf_counter()
                response = client.get(target, headers=headers)
                assert time.perf_counter() - started < 1.0, target
                assert response.status_code in (200, 304), target
            assert not any(future.done() for future in slow_ones)
        finally:
            release.set()
        assert all(future.result().status_code == 200 for future in slow_ones)


def test_concurrent_requests_for_one_image_render_it_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = viewer.render.render
    calls: list[int] = []

    def slowish(source: Path, params: viewer.render.RenderParams) -> viewer.render.RenderedImage:
        calls.append(params.frame)
        time.sleep(0.2)
        return real(source, params)

    monkeypatch.setattr(viewer.render, "render", slowish)
    with ThreadPoolExecutor(6) as threads:
        answers = list(threads.map(lambda _: client.get(f"{XA.url}/frames/2/rendered"), range(6)))
    assert {a.status_code for a in answers} == {200} and len({a.content for a in answers}) == 1
    assert calls == [2]


# --- audit ---------------------------------------------------------------------------------


def test_every_rendered_request_is_audited(client: TestClient, archive: Archive) -> None:
    requests = {
        f"{CT.url}/rendered": 200,
        f"{CT.url}/frames/1/rendered": 200,
        f"{CT.url}/thumbnail": 200,
        f"/dicomweb/studies/{CT.study}/thumbnail": 200,
        f"/dicomweb/studies/{CT.study}/series/{CT.series}/rendered": 200,
        f"{CT.url}/rendered?window=1,0": 400,
        f"{CT.wado}": 200,
    }
    for url, expected in requests.items():
        assert client.get(url).status_code == expected, url
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.sessions() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    rendered = [row for row in rows if row.action == "render"]
    assert [(row.path.split("?")[0], row.status) for row in rendered] == [
        (url.split("?")[0], expected) for url, expected in requests.items()
    ]
    assert all(row.username == "admin" and row.study_instance_uid == CT.study for row in rendered)
    assert rendered[0].series_instance_uid == CT.series
    assert rendered[0].sop_instance_uid == CT.instance
    assert rendered[3].sop_instance_uid == ""  # study thumbnail: no instance in the path
    assert rendered[-1].sop_instance_uid == CT.instance  # WADO-URI: from the query


# --- WADO-URI ---------------------------------------------------------------------------------


def test_wado_uri_images(client: TestClient, samples: dict[str, Item]) -> None:
    default = client.get(CT.wado)  # image/jpeg by default for images (PS3.18 §9)
    assert default.headers["content-type"] == "image/jpeg" and image(default).size == (256, 256)
    assert default.headers["etag"] == client.get(f"{CT.url}/rendered").headers["etag"]
    assert client.get(CT.wado, headers={"if-none-match": default.headers["etag"]}).status_code == (
        304
    )
    png = client.get(f"{CT.wado}&contentType=image/png")
    assert image(png).format == "PNG"
    assert image(client.get(f"{CT.wado}&contentType=image/gif")).format == "GIF"
    listed = client.get(f"{CT.wado}&contentType=image/tiff,image/png")
    assert listed.headers["content-type"] == "image/png"
    assert image(client.get(f"{XA.wado}&contentType=image/gif")).n_frames == 30
    one = image(client.get(f"{XA.wado}&contentType=image/gif&frameNumber=12"))
    assert one.n_frames == 1
    assert (
        client.get(f"{XA.wado}&frameNumber=12").content
        == client.get(f"{XA.url}/frames/12/rendered").content
    )
    windowed = client.get(f"{CT.wado}&windowCenter=-600&windowWidth=1500")
    assert windowed.content == client.get(f"{CT.url}/rendered?window=-600,1500").content
    assert image(client.get(f"{CT.wado}&rows=64&columns=64")).size == (64, 64)
    assert image(client.get(f"{CT.wado}&rows=32")).size == (32, 32)
    assert image(client.get(f"{CT.wado}&columns=100000")).size[0] <= 4096
    region = image(client.get(f"{CT.wado}&region=0.25,0.25,0.75,0.75&rows=64&columns=64"))
    assert region.size == (64, 64)
    low = client.get(f"{CT.wado}&imageQuality=5")
    assert len(low.content) < len(default.content)
    assert client.get(f"{CT.wado}&annotation=patient&preset=bone").status_code == 200
    # a Part 10 file is still there for the asking, and the default for non-images
    dicom = client.get(f"{CT.wado}&contentType=application/dicom")
    assert dicom.headers["content-type"] == "application/dicom"
    assert client.get(samples["no-pixels"].wado).headers["content-type"] == "application/dicom"
    errors = {
        f"{CT.wado}&windowCenter=40&windowWidth=0": (400, "greater than 0"),
        f"{CT.wado}&windowCenter=40": (400, "go together"),
        f"{CT.wado}&windowCenter=40&windowWidth=x": (400, "center,width"),
        f"{CT.wado}&rows=0": (400, "greater than 0"),
        f"{CT.wado}&columns=-3": (400, "whole numbers"),
        f"{CT.wado}&region=0.5,0.5,0.2,0.9": (400, "min < max"),
        f"{CT.wado}&region=0,0,2,1": (400, "fractions"),
        f"{CT.wado}&frameNumber=2": (404, "no frame 2"),
        f"{CT.wado}&frameNumber=x": (400, "frame number"),
        f"{CT.wado}&imageQuality=0": (400, "1 to 100"),
        f"{CT.wado}&presentationUID=1.2.3": (400, "presentation states"),
        f"{CT.wado}&preset=lung&windowCenter=1&windowWidth=2": (400, "preset"),
        f"{CT.wado}&contentType=image/tiff": (406, "image/jpeg"),
        f"{samples['no-pixels'].wado}&contentType=image/png": (406, "no pixel data"),
        f"{samples['garbled'].wado}": (422, "cannot be decoded"),
    }
    for url, (expected, message) in errors.items():
        response = client.get(url)
        assert response.status_code == expected, (url, response.text)
        assert message in response.json()["detail"], (url, response.text)
    refused = client.get(CT.wado, headers={"accept": "application/dicom"})
    assert refused.status_code == 406


# --- a live server -------------------------------------------------------------------------


def test_live_server(server: Server) -> None:
    with server.opened() as archive:
        for path in [*CT_FILES, *sorted((SAMPLES / "xa_coronary").rglob("*.dcm"))]:
            assert archive.ingest(path).ok
    with httpx.Client(base_url=server.base_url, auth=("admin", ADMIN_PASSWORD)) as http:
        # the cine loop renders while other requests go on
        with ThreadPoolExecutor(2) as threads:
            cine = threads.submit(
                http.get, f"{XA.url}/rendered", headers={"accept": "image/gif"}, timeout=60
            )
            slices = [http.get(f"{item_of(path).url}/rendered") for path in CT_FILES[:8]]
            assert http.get("/healthz").status_code == 200
            assert image(cine.result()).n_frames == 30
        assert all(image(response).size == (256, 256) for response in slices)
        etag = slices[0].headers["etag"]
        assert http.get(f"{CT.url}/rendered", headers={"if-none-match": etag}).status_code == 304
        thumbnail = http.get(f"/dicomweb/studies/{CT.study}/thumbnail?viewport=64,64")
        assert image(thumbnail).size == (64, 64)
        study = http.get(f"/dicomweb/studies/{CT.study}/rendered?viewport=32,32")
        assert len(parts(study)) == len(CT_FILES)
        assert http.get(f"{CT.url}/rendered?window=0,0").status_code == 400
        metrics = http.get("/metrics").text
        assert "pacs_render_seconds_bucket" in metrics
        assert 'pacs_renders_total{outcome="rendered"}' in metrics
