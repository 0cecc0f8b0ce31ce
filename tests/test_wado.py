"""WADO-RS and WADO-URI: instances, metadata, frames and bulk data, as clients fetch them.

A live ``pacs serve`` holds pydicom's test files in every transfer syntax (with
fresh UIDs) plus the sample studies, and dicomweb-client - a client nobody here
wrote - retrieves them every way it can: what comes back must equal what was
stored, element by element, and byte for byte when asked for as stored.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import get_charset_files
from pydicom.dataset import FileDataset
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from api.app import create_app
from api.dicomweb.metadata import _QuickHeader, dataset_json, instance_json, read_instance_json
from api.dicomweb.negotiation import (
    UNCOMPRESSED,
    PixelChoice,
    choose_pixels,
    choose_syntax,
    dicom_offers,
    parse_accept,
    pixel_offers,
)
from api.dicomweb.transcode import StoredFile
from storage import Archive
from storage.models import AuditEvent
from storage.users import Role, create_user
from tests.conftest import (
    ADMIN_PASSWORD,
    SAMPLES,
    Server,
    fresh_database_url,
    migrated_archive,
)

EXPLICIT = "1.2.840.10008.1.2.1"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# pydicom's test files, one per transfer syntax (and a few shapes worth having).
PYDICOM_FILES = {
    "explicit-le": "CT_small.dcm",
    "implicit-le": "MR_small_implicit.dcm",
    "big-endian": "MR_small_bigendian.dcm",
    "big-endian-frames": "emri_small_big_endian.dcm",
    "deflated": "image_dfl.dcm",
    "jpeg-baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg-lossless": "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "jpeg-ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg-ls-frames": "emri_small_jpeg_ls_lossless.dcm",
    "jpeg-2000-lossless": "MR_small_jp2klossless.dcm",
    "jpeg-2000": "JPEG2000.dcm",
    "rle": "MR_small_RLE.dcm",
    "rle-rgb-frames": "SC_rgb_rle_2frame.dcm",
    "no-pixels": "rtplan.dcm",
    "private-bulk": "MR-SIEMENS-DICOM-WithOverlays.dcm",
}
# Media types dicomweb-client accepts for each compressed syntax's frames.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True)
class Stored:
    """A file as it went into the archive, and where to find it over DICOMweb."""

    path: Path
    study: str
    series: str
    instance: str

    @property
    def dataset(self) -> FileDataset:
        return dcmread(self.path)

    @property
    def syntax(self) -> str:
        return str(self.dataset.file_meta.TransferSyntaxUID)

    @property
    def url(self) -> str:
        return f"/dicomweb/studies/{self.study}/series/{self.series}/instances/{self.instance}"


def with_fresh_uids(
    source: Path, target: Path, edit: Callable[[Dataset], None] | None = None
) -> Stored:
    """Copy a file under new UIDs, in its own transfer syntax (pydicom's files share UIDs)."""
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in "sei")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if edit is not None:
        edit(ds)
    ds.save_as(target)
    return Stored(target, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def add_icon(ds: Dataset) -> None:
    """A nested bulk data element: a 64x64 icon's pixels inside a sequence item."""
    icon = Dataset()
    icon.Rows = icon.Columns = 64
    icon.SamplesPerPixel, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 1, 8, 8, 7
    icon.PhotometricInterpretation, icon.PixelRepresentation = "MONOCHROME2", 0
    icon.PixelData = bytes(range(256)) * 16
    ds.IconImageSequence = [icon]


def sample(name: str) -> Stored:
    """A sample-study file as stored (its own UIDs)."""
    ds = dcmread(name, stop_before_pixels=True)
    return Stored(Path(name), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stored]:
    folder = tmp_path_factory.mktemp("files")
    files = {
        key: with_fresh_uids(Path(str(get_testdata_file(name))), folder / f"{key}.dcm")
        for key, name in PYDICOM_FILES.items()
    }
    files["nested-bulk"] = with_fresh_uids(
        Path(str(get_testdata_file("CT_small.dcm"))), folder / "nested.dcm", add_icon
    )
    files["xa-frames"] = sample(str(next((SAMPLES / "xa_coronary").rglob("*.dcm"))))
    files["undecodable"] = with_fresh_uids(  # JPEG 12-bit that no installed plugin decodes
        Path(str(get_testdata_file("JPEG-lossy.dcm"))), folder / "undecodable.dcm"
    )
    files["latin1-implicit"], files["latin1-rle"] = (
        sample(str(path)) for path in sorted((SAMPLES / "ct_latin1").rglob("*.dcm"))
    )
    return files


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, stored: dict[str, Stored]) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("wado") / "pacs-data")
    server.start()
    archive = server.archive()
    for path in sorted(SAMPLES.rglob("*.dcm")):
        assert archive.ingest(path).ok
    for item in stored.values():
        assert archive.ingest(item.path).ok, item.path
    archive.sessions.kw["bind"].dispose()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dw(live: Server) -> DICOMwebClient:
    session = requests.Session()
    session.auth = ("admin", ADMIN_PASSWORD)
    return DICOMwebClient(f"{live.base_url}/dicomweb", session=session)


@pytest.fixture(scope="module")
def http(live: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, auth=("admin", ADMIN_PASSWORD)) as client:
        yield client


# --- comparing what came back with what went in -------------------------------------


def assert_same_elements(actual: Dataset, expected: Dataset) -> None:
    """Same tags, VRs and values, pixel data compared as bytes."""
    assert list(actual.keys()) == list(expected.keys())
    for elem in expected:
        other = actual[elem.tag]
        assert (other.VR, other.value) == (elem.VR, elem.value), elem.tag


def assert_same_content(actual: Dataset, stored: Stored) -> None:
    """Decompressed or re-encoded: same attributes, same decoded pixels."""
    assert actual.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    expected = stored.dataset
    if expected.file_meta.TransferSyntaxUID.is_encapsulated:
        expected.decompress(generate_instance_uid=False)  # what YBR -> RGB does to the header
    for elem in expected:
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue  # compared below (pixels) or re-encoded (endianness)
        assert actual[elem.tag].value == elem.value, elem.tag
    if "PixelData" in expected:
        assert np.array_equal(actual.pixel_array, stored.dataset.pixel_array)


def stored_frames(item: Stored) -> list[bytes]:
    ds = item.dataset
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def decoded_frame(item: Stored, index: int) -> np.ndarray:
    return pixel_array(item.dataset, index=index)


def as_array(frame: bytes, like: np.ndarray) -> np.ndarray:
    """Uncompressed bulk data is little endian (PS3.18 §8.7.3.3.1), whatever was stored."""
    return np.frombuffer(frame, dtype=like.dtype.newbyteorder("<")).reshape(like.shape)


def bulk_uris(metadata: dict[str, Any], path: str = "") -> dict[str, str]:
    """Every BulkDataURI of a DICOM JSON dataset, by element path."""
    found: dict[str, str] = {}
    for tag, element in metadata.items():
        if "BulkDataURI" in element:
            found[f"{path}{tag}"] = element["BulkDataURI"]
        for index, item in enumerate(element.get("Value", []) if element["vr"] == "SQ" else []):
            found |= bulk_uris(item, f"{path}{tag}/{index}/")
    return found


def with_uris_replaced(element: dict[str, Any]) -> dict[str, Any]:
    """The element with every BulkDataURI in it replaced by "bulk"."""
    if "BulkDataURI" in element:
        return {**element, "BulkDataURI": "bulk"}
    if element["vr"] == "SQ":
        items = [
            {t: with_uris_replaced(e) for t, e in item.items()} for item in element.get("Value", [])
        ]
        return {**element, "Value": items}
    return element


def element_at(ds: Dataset, path: str) -> bytes:
    parts = path.split("/")
    for depth in range(0, len(parts) - 1, 2):
        ds = ds[int(parts[depth], 16)].value[int(parts[depth + 1])]
    return bytes(ds[int(parts[-1], 16)].value)


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    body = response.content
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    parts = []
    for chunk in body[: -len(f"\r\n--{boundary}--\r\n")].split(f"\r\n--{boundary}\r\n".encode()):
        head, _, content = chunk.partition(b"\r\n\r\n")
        content_type = head.decode().split("Content-Type:")[1].strip()
        parts.append((content_type, content))
    return parts


# --- dicomweb-client, every retrieve method ----------------------------------------------


@pytest.mark.parametrize("key", [*PYDICOM_FILES, "nested-bulk", "xa-frames", "latin1-implicit"])
def test_instance_as_stored_and_decompressed(
    dw: DICOMwebClient, stored: dict[str, Stored], key: str
) -> None:
    item = stored[key]
    as_stored = dw.retrieve_instance(
        item.study, item.series, item.instance, media_types=(("application/dicom", "*"),)
    )
    assert as_stored.file_meta.TransferSyntaxUID == item.syntax
    assert_same_elements(as_stored, item.dataset)
    default = dw.retrieve_instance(  # its own default is "*"
        item.study, item.series, item.instance, media_types=(("application/dicom", EXPLICIT),)
    )
    if item.syntax == EXPLICIT:
        assert_same_elements(default, item.dataset)
    else:
        assert_same_content(default, item)


def test_as_stored_is_byte_for_byte(http: httpx.Client, stored: dict[str, Stored]) -> None:
    for item in stored.values():
        response = http.get(item.url, headers={"Accept": AS_STORED})
        [(content_type, body)] = multipart_parts(response)
        assert content_type == f"application/dicom; transfer-syntax={item.syntax}"
        assert body == item.path.read_bytes(), item.path


def test_single_part_answers(http: httpx.Client, stored: dict[str, Stored]) -> None:
    item = stored["jpeg-2000"]
    whole = http.get(item.url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert whole.headers["content-type"] == f"application/dicom; transfer-syntax={item.syntax}"
    assert whole.content == item.path.read_bytes()
    frame = http.get(f"{item.url}/frames/1", headers={"Accept": "image/jp2"})
    assert frame.headers["content-type"] == f"image/jp2; transfer-syntax={item.syntax}"
    assert frame.content == stored_frames(item)[0]
    xa = stored["xa-frames"]
    several = http.get(f"{xa.url}/frames/1,2", headers={"Accept": "application/octet-stream"})
    assert several.status_code == 406


def test_what_cannot_be_decoded(http: httpx.Client, stored: dict[str, Stored]) -> None:
    """PS3.18 lets lossy data that cannot be decompressed go as stored, and says so."""
    item = stored["undecodable"]
    [(content_type, body)] = multipart_parts(http.get(item.url))
    assert content_type == f"application/dicom; transfer-syntax={item.syntax}"
    assert body == item.path.read_bytes()
    frame = http.get(f"{item.url}/frames/1")
    assert frame.status_code == 406
    assert "transfer-syntax=*" in frame.json()["detail"]
    [(_, encoded)] = multipart_parts(
        http.get(f"{item.url}/frames/1", headers={"Accept": OHIF_FRAMES})
    )
    assert encoded == stored_frames(item)[0]


def test_study_and_series_retrieval(dw: DICOMwebClient, stored: dict[str, Stored]) -> None:
    xa = stored["xa-frames"]
    study = dw.retrieve_study(xa.study, media_types=(("application/dicom", "*"),))
    assert [ds.SOPInstanceUID for ds in study] == [xa.instance]
    latin1 = stored["latin1-implicit"]
    series = dw.retrieve_series(latin1.study, latin1.series)
    assert {ds.file_meta.TransferSyntaxUID for ds in series} == {EXPLICIT}
    assert [ds.InstanceNumber for ds in series] == [1, 2]
    assert series[0].PatientName == latin1.dataset.PatientName
    streamed = list(
        dw.iter_series(latin1.study, latin1.series, media_types=(("application/dicom", "*"),))
    )
    assert [ds.file_meta.TransferSyntaxUID for ds in streamed] == [
        stored["latin1-implicit"].syntax,
        stored["latin1-rle"].syntax,
    ]
    assert len(list(dw.iter_study(xa.study))) == 1


@pytest.mark.parametrize("key", [*PYDICOM_FILES, "nested-bulk", "xa-frames", "latin1-rle"])
def test_metadata_and_bulk_data_rebuild_the_instance(
    dw: DICOMwebClient, stored: dict[str, Stored], key: str
) -> None:
    item = stored[key]
    metadata = dw.retrieve_instance_metadata(item.study, item.series, item.instance)
    header = dcmread(item.path, stop_before_pixels=True)
    expected = header.to_json_dict(1024, lambda _: "bulk")
    uris = bulk_uris(metadata)
    ours = {
        tag: element for tag, element in metadata.items() if tag not in ("7FE00010", "00083002")
    }
    for path in uris:
        tag = path.split("/")[0]
        if tag in ours:
            ours[tag] = with_uris_replaced(ours[tag])
    assert ours == expected
    assert metadata["00083002"]["Value"] == [item.syntax]
    has_pixels = "PixelData" in item.dataset
    assert ("7FE00010" in metadata) == has_pixels
    for path, uri in uris.items():
        [value] = dw.retrieve_bulkdata(uri)
        if path == "7FE00010":
            ds = item.dataset
            pixels = ds.pixel_array
            assert np.array_equal(as_array(value, pixels), pixels)
        else:
            assert value == element_at(item.dataset, path), path
    rebuilt = Dataset.from_json(
        metadata, bulk_data_uri_handler=lambda _tag, _vr, uri: bytes(dw.retrieve_bulkdata(uri)[0])
    )
    swapped = ("OW", "OF", "OL", "OD", "OV") if item.syntax == "1.2.840.10008.1.2.2" else ()
    for elem in header:
        if elem.VR not in swapped:  # big-endian words come back little endian
            assert rebuilt[elem.tag].value == elem.value, elem.tag


def test_study_and_series_metadata(dw: DICOMwebClient, stored: dict[str, Stored]) -> None:
    latin1 = stored["latin1-implicit"]
    series = dw.retrieve_series_metadata(latin1.study, latin1.series)
    assert [m["00200013"]["Value"] for m in series] == [[1], [2]]
    assert dw.retrieve_series_metadata(latin1.study, latin1.series) == series  # from the cache
    assert dw.retrieve_study_metadata(latin1.study) == series
    xa = stored["xa-frames"]
    assert dw.retrieve_study_metadata(xa.study) == [
        dw.retrieve_instance_metadata(xa.study, xa.series, xa.instance)
    ]


@pytest.mark.parametrize(
    "key",
    [
        "explicit-le",
        "big-endian-frames",
        "deflated",
        "jpeg-baseline",
        "jpeg-lossless",
        "jpeg-ls-frames",
        "jpeg-2000",
        "rle-rgb-frames",
        "xa-frames",
        "latin1-rle",
    ],
)
def test_frames(dw: DICOMwebClient, stored: dict[str, Stored], key: str) -> None:
    item = stored[key]
    count = int(item.dataset.get("NumberOfFrames", 1))
    numbers = sorted({1, count, (count + 1) // 2})
    uncompressed = dw.retrieve_instance_frames(
        item.study, item.series, item.instance, numbers, media_types=("application/octet-stream",)
    )
    for number, frame in zip(numbers, uncompressed, strict=True):
        expected = decoded_frame(item, number - 1)
        assert np.array_equal(as_array(frame, expected), expected)
    as_stored = dw.retrieve_instance_frames(
        item.study,
        item.series,
        item.instance,
        numbers,
        media_types=(("application/octet-stream", "*"),),
    )
    if not item.dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        assert as_stored == uncompressed
        return
    frames = stored_frames(item)
    assert as_stored == [frames[n - 1] for n in numbers]
    media_type = FRAME_MEDIA_TYPES[item.syntax]
    by_media_type = dw.retrieve_instance_frames(
        item.study,
        item.series,
        item.instance,
        numbers[::-1],
        media_types=((media_type, item.syntax),),
    )
    assert by_media_type == [frames[n - 1] for n in numbers[::-1]]
    assert list(dw.iter_instance_frames(item.study, item.series, item.instance, [1])) == [
        uncompressed[0]
    ]


# --- what OHIF sends -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "frame", "media_type"),
    [
        ("xa-frames", 2, "image/jp2"),
        ("jpeg-ls", 1, "image/jls"),
        ("rle", 1, "image/dicom-rle"),
        ("jpeg-baseline", 1, "image/jpeg"),
        ("explicit-le", 1, "application/octet-stream"),
    ],
)
def test_ohif_frames_are_labelled_with_their_syntax(
    http: httpx.Client, stored: dict[str, Stored], key: str, frame: int, media_type: str
) -> None:
    item = stored[key]
    response = http.get(f"{item.url}/frames/{frame}", headers={"Accept": OHIF_FRAMES})
    [(content_type, body)] = multipart_parts(response)
    assert content_type == f"{media_type}; transfer-syntax={item.syntax}"
    if media_type == "application/octet-stream":
        assert body == item.dataset.PixelData
    else:
        assert body == stored_frames(item)[frame - 1]


def test_series_metadata_points_at_resolvable_bulk_data(
    http: httpx.Client, stored: dict[str, Stored]
) -> None:
    item = stored["xa-frames"]
    response = http.get(f"/dicomweb/studies/{item.study}/series/{item.series}/metadata")
    [metadata] = response.json()
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://") and uri.endswith("/bulkdata/7FE00010")
    compressed = http.get(uri, headers={"Accept": OHIF_FRAMES})
    assert [body for _, body in multipart_parts(compressed)] == stored_frames(item)
    single = http.get(uri, headers={"Accept": "application/octet-stream"})
    assert single.headers["content-type"].startswith("application/octet-stream")
    assert np.array_equal(
        as_array(single.content, item.dataset.pixel_array), item.dataset.pixel_array
    )


# --- validators and conditional requests ----------------------------------------------------


def test_etags_last_modified_and_304(http: httpx.Client, stored: dict[str, Stored]) -> None:
    item = stored["jpeg-ls"]
    resources = [
        (item.url, AS_STORED),
        (item.url, "multipart/related; type=application/dicom"),
        (f"{item.url}/metadata", "application/dicom+json"),
        (f"{item.url}/frames/1", OHIF_FRAMES),
        (f"{item.url}/bulkdata/7FE00010", "multipart/related; type=application/octet-stream"),
        (
            f"/wado?requestType=WADO&studyUID={item.study}&seriesUID={item.series}"
            f"&objectUID={item.instance}&contentType=application/dicom",
            "*/*",
        ),
    ]
    etags = set()
    for url, accept in resources:
        first = http.get(url, headers={"Accept": accept})
        assert first.status_code == 200, (url, first.text)
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        assert etag.startswith('"') and not etag.startswith("W/")
        etags.add(etag)
        again = http.get(url, headers={"Accept": accept})
        assert again.headers["etag"] == etag and again.content == first.content
        cached = http.get(url, headers={"Accept": accept, "If-None-Match": etag})
        assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag)
        since = http.get(url, headers={"Accept": accept, "If-Modified-Since": modified})
        assert since.status_code == 304
        old = http.get(
            url, headers={"Accept": accept, "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
        )
        assert old.status_code == 200
        other = http.get(url, headers={"Accept": accept, "If-None-Match": '"other"'})
        assert other.status_code == 200
    assert len(etags) == len(resources)  # each representation its own validator


# --- errors --------------------------------------------------------------------------------


def test_unacceptable_media_types_are_406(http: httpx.Client, stored: dict[str, Stored]) -> None:
    plain, jls = stored["explicit-le"], stored["jpeg-ls"]
    cases = [
        (plain.url, "application/pdf"),
        (
            plain.url,
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80',
        ),
        (plain.url, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4'),
        (f"/dicomweb/studies/{plain.study}", "image/jpeg"),
        (f"{plain.url}/metadata", "application/dicom+xml"),
        (f"{plain.url}/frames/1", 'multipart/related; type="image/jls"'),
        (f"{plain.url}/frames/1", "text/html"),
        (f"{jls.url}/frames/1", 'multipart/related; type="image/jp2"'),
        (f"{jls.url}/bulkdata/7FE00010", "application/pdf"),
    ]
    for url, accept in cases:
        response = http.get(url, headers={"Accept": accept})
        assert response.status_code == 406, (url, accept)
        assert response.json()["detail"]


def test_unknown_and_malformed(http: httpx.Client, stored: dict[str, Stored]) -> None:
    item, other = stored["xa-frames"], stored["explicit-le"]
    base = f"/dicomweb/studies/{item.study}/series/{item.series}"
    not_found = [
        "/dicomweb/studies/1.2.3.4",
        "/dicomweb/studies/1.2.3.4/metadata",
        f"{base}/instances/1.2.3.4",
        f"{base}/instances/{other.instance}",  # exists, but in another series
        f"/dicomweb/studies/{other.study}/series/{item.series}/metadata",
        f"{item.url}/frames/31",
        f"{item.url}/frames/1,31",
        f"{item.url}/bulkdata/00091010",
        f"{stored['no-pixels'].url}/frames/1",
        f"{stored['no-pixels'].url}/bulkdata/7FE00010",
    ]
    for url in not_found:
        response = http.get(url)
        assert response.status_code == 404, url
        assert response.json()["detail"]
    malformed = [
        "/dicomweb/studies/1.2.abc",
        f"/dicomweb/studies/{item.study}/series/x/metadata",
        f"{base}/instances/{'1' * 65}",
        f"{item.url}/frames/0",
        f"{item.url}/frames/a",
        f"{item.url}/frames/1,,2",
        f"{item.url}/frames/-1",
        f"{item.url}/bulkdata/zz",
        f"{item.url}/bulkdata/7FE00010/x",
    ]
    for url in malformed:
        response = http.get(url)
        assert response.status_code == 400, url


def test_every_read_is_audited(http: httpx.Client, live: Server, stored: dict[str, Stored]) -> None:
    item = stored["rle"]
    frames = f"{item.url}/frames/1"
    wado = (
        f"/wado?requestType=WADO&studyUID={item.study}&seriesUID={item.series}"
        f"&objectUID={item.instance}&contentType=application/dicom"
    )
    for url in (frames, wado):
        assert http.get(url).status_code == 200
    archive = live.archive()
    deadline = time.monotonic() + 10
    events: list[AuditEvent] = []
    while time.monotonic() < deadline and {e.path for e in events} != {frames, wado}:
        with archive.sessions() as session:
            query = select(AuditEvent).where(AuditEvent.path.in_([frames, wado]))
            events = list(session.scalars(query))
        time.sleep(0.05)  # the audit trail is written by a background thread
    archive.sessions.kw["bind"].dispose()
    assert {(e.path, e.action, e.username, e.status) for e in events} == {
        (frames, "retrieve", "admin", 200),
        (wado, "retrieve", "admin", 200),
    }
    assert {(e.study_instance_uid, e.series_instance_uid, e.sop_instance_uid) for e in events} == {
        (item.study, item.series, item.instance)
    }


def test_responses_stream(http: httpx.Client, stored: dict[str, Stored]) -> None:
    item = stored["xa-frames"]
    with http.stream(
        "GET", f"/dicomweb/studies/{item.study}", headers={"Accept": AS_STORED}
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        sizes = [len(chunk) for chunk in response.iter_raw()]
    assert sum(sizes) > item.path.stat().st_size


# --- WADO-URI ---------------------------------------------------------------------------------


def test_wado_uri(http: httpx.Client, stored: dict[str, Stored]) -> None:
    item = stored["jpeg-ls"]
    query = (
        f"requestType=WADO&studyUID={item.study}&seriesUID={item.series}&objectUID={item.instance}"
    )
    default = http.get(f"/wado?{query}&contentType=application/dicom")
    assert default.status_code == 200 and default.headers["content-type"] == "application/dicom"
    ds = dcmread(io.BytesIO(default.content))
    assert_same_content(ds, item)
    as_stored = http.get(f"/wado?{query}&contentType=application/dicom&transferSyntax=*")
    assert as_stored.content == item.path.read_bytes()
    named = http.get(f"/wado?{query}&contentType=application/dicom&transferSyntax={item.syntax}")
    assert named.content == item.path.read_bytes()
    no_pixels = stored["no-pixels"]
    rtplan_url = (
        f"/wado?requestType=WADO&studyUID={no_pixels.study}&seriesUID={no_pixels.series}"
        f"&objectUID={no_pixels.instance}"
    )
    rtplan = http.get(rtplan_url)
    assert rtplan.status_code == 200  # application/dicom is the default for non-images
    errors = {
        f"/wado?{query.replace('requestType=WADO&', '')}&contentType=application/dicom": 400,
        f"/wado?{query.replace('WADO', 'WADOX')}&contentType=application/dicom": 400,
        f"/wado?requestType=WADO&studyUID={item.study}&seriesUID={item.series}": 400,
        f"/wado?{query.replace(item.instance, 'abc')}": 400,
        f"/wado?{query}&contentType=application/dicom&transferSyntax=x.y": 400,
        f"/wado?{query.replace(item.instance, '1.2.3')}&contentType=application/dicom": 404,
        f"/wado?{query.replace(item.series, stored['rle'].series)}": 404,
        f"/wado?{query}&contentType=image/tiff": 406,
        f"{rtplan_url}&contentType=image/jpeg": 406,  # nothing to render
        f"/wado?{query}&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.4.50": 406,
        f"/wado?{query}&contentType=application/dicom&anonymize=yes": 406,
    }
    for url, expected in errors.items():
        response = http.get(url)
        assert response.status_code == expected, (url, response.text)
    for url in (f"/wado?{query}", f"/wado?{query}&contentType=image/jpeg"):
        image = http.get(url)  # image/jpeg by default for images (more in test_rendered.py)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg", url
    assert http.get(f"/wado?{query}", auth=None).status_code == 401


# --- in process: caching, streaming, both databases --------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp("wado-db")
    arch = migrated_archive(fresh_database_url(request, folder), folder)
    with arch.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "ct-room", "modality-pass", Role.MODALITY)
        session.commit()
    yield arch
    arch.sessions.kw["bind"].dispose()


@pytest.fixture(scope="module")
def app_client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as client:
        client.auth = ("admin", "admin-password")
        yield client


def test_series_metadata_cache_sees_new_instances(app_client: TestClient, archive: Archive) -> None:
    ct = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))
    first = sample(str(ct[0]))
    for path in ct[:3]:
        assert archive.ingest(path).ok
    url = f"/dicomweb/studies/{first.study}/series/{first.series}/metadata"
    cold = app_client.get(url)
    assert [m["00200013"]["Value"][0] for m in cold.json()] == [1, 2, 3]
    warm = app_client.get(url)
    assert warm.content == cold.content and warm.headers["etag"] == cold.headers["etag"]
    assert archive.ingest(ct[3]).ok
    after = app_client.get(url, headers={"If-None-Match": cold.headers["etag"]})
    assert after.status_code == 200
    assert [m["00200013"]["Value"][0] for m in after.json()] == [1, 2, 3, 4]
    assert app_client.get(url, auth=("ct-room", "modality-pass")).status_code == 403


def test_a_study_goes_out_one_open_file_at_a_time(
    app_client: TestClient, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    mr = sorted((SAMPLES / "mr_brain").rglob("*.dcm"))
    for path in mr:
        assert archive.ingest(path).ok
    blobs, real_open = archive.blobs, archive.blobs.open
    state = {"open": 0, "most": 0, "opened": 0}

    class Tracked:
        def __init__(self, key: str) -> None:
            self.fp = real_open(key)
            state["open"] += 1
            state["opened"] += 1
            state["most"] = max(state["most"], state["open"])

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fp, name)

        def __enter__(self) -> Tracked:
            return self

        def __exit__(self, *_: object) -> None:
            self.close()

        def close(self) -> None:
            if not self.fp.closed:
                state["open"] -= 1
            self.fp.close()

    monkeypatch.setattr(blobs, "open", Tracked)
    study = sample(str(mr[0])).study
    for accept in (AS_STORED, "multipart/related; type=application/dicom"):
        response = app_client.get(f"/dicomweb/studies/{study}", headers={"Accept": accept})
        parts = multipart_parts(response)
        assert len(parts) == len(mr)
        numbers = [dcmread(io.BytesIO(body)).InstanceNumber for _, body in parts]
        assert numbers == sorted(numbers)
    assert state["most"] == 1 and state["open"] == 0 and state["opened"] >= 2 * len(mr)


# --- units: negotiation and the JSON converter ----------------------------------------------


def test_accept_headers_as_clients_write_them() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*, */*;q=0.1'
    )
    assert [r.media_type for r in ranges] == ["multipart/related", "*/*"]
    assert (
        choose_syntax(dicom_offers(ranges), "1.2.840.10008.1.2.4.80").syntax
        == "1.2.840.10008.1.2.4.80"
    )
    default = dicom_offers(parse_accept("multipart/related; type=application/dicom"))
    assert choose_syntax(default, "1.2.840.10008.1.2.4.80").syntax == EXPLICIT
    assert choose_syntax(default, EXPLICIT).syntax == EXPLICIT
    only_jls = dicom_offers(
        parse_accept(
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
        )
    )
    assert choose_syntax(only_jls, EXPLICIT) is None
    for ohif in (
        OHIF_FRAMES,
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    ):
        choice = choose_pixels(pixel_offers(parse_accept(ohif)), "1.2.840.10008.1.2.4.80")
        assert choice == PixelChoice(True, "image/jls", "1.2.840.10008.1.2.4.80", True)
        assert choose_pixels(pixel_offers(parse_accept(ohif)), EXPLICIT) == UNCOMPRESSED
    refused = parse_accept("application/dicom;q=0, text/html")
    assert [r.media_type for r in refused] == ["text/html"]
    assert choose_pixels(pixel_offers(parse_accept("image/*")), "1.2.840.10008.1.2.5") == (
        PixelChoice(True, "image/dicom-rle", "1.2.840.10008.1.2.5", False)
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's test files break rules on purpose
def test_metadata_readers_agree_with_pydicom() -> None:
    """Both fast paths give pydicom's own JSON, to the byte, on every file pydicom has."""
    folder = Path(str(get_testdata_file("CT_small.dcm"))).parent
    files = [*sorted(folder.glob("*.dcm")), *map(Path, sorted(get_charset_files("*.dcm")))]
    files += sorted(SAMPLES.rglob("*.dcm"))
    compared = quick = 0
    for path in files:
        try:
            header = dcmread(path, stop_before_pixels=True)
            expected = header.to_json_dict(1024, lambda _: "bulk")
            with StoredFile(path.open("rb")) as stored_file:
                reference = instance_json(stored_file, "bulk")
        except Exception:
            continue  # files pydicom itself cannot turn into JSON
        ours = dataset_json(dcmread(path, stop_before_pixels=True), lambda _: "bulk")
        assert json.dumps(ours) == json.dumps(expected), path.name
        quick_json = read_instance_json(path.open("rb"), "bulk")
        assert json.dumps(quick_json) == json.dumps(reference), path.name
        compared += 1
        with path.open("rb") as fp:
            quick += _QuickHeader(fp, "bulk").json() is not None
    assert compared > 100 and quick > 80
