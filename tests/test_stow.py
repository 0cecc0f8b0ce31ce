"""STOW-RS against a real ``pacs serve``: dicomweb-client for what works, raw bodies for what
must not.

Every failure case also checks that nothing was half-stored: the staging folder is
empty and no index row exists for the broken parts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from api.dicomweb.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart
from storage.models import AuditEvent, Instance
from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server, dataset_differences

ADMIN = ("admin", ADMIN_PASSWORD)
BOUNDARY = "stow-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
RETRIEVE_URL = "00081190"
WARNING_REASON = "00081196"
FAILURE_REASON = "00081197"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"

OUT_OF_RESOURCES = 0xA700
MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
ELEMENTS_DISCARDED = 0xB006

# One pydicom test file per transfer syntax (files sharing a SOP Instance UID get a new one).
ACROSS_SYNTAXES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEG2000.dcm",  # JPEG 2000
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000 lossless
    "SC_rgb_rle.dcm",  # RLE lossless
]
RE_UID = {"MR_small_implicit.dcm", "emri_small_jpeg_ls_lossless.dcm"}


# --- helpers -------------------------------------------------------------------------------


def pydicom_file(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return dcmread(path)


def with_new_uid(ds: Dataset) -> Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def encoded(ds: Dataset) -> bytes:
    """The bytes dicomweb-client sends for ``ds``."""
    with io.BytesIO() as out:
        dcmwrite(out, ds)
        return out.getvalue()


def new_instance(study: str | None = None) -> Dataset:
    """CT_small with fresh SOP Instance UID (and study, unless given)."""
    ds = with_new_uid(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return ds


def multipart(*parts: tuple[str, bytes], close: bool = True) -> bytes:
    body = b""
    for content_type, data in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def dicom(ds: Dataset) -> tuple[str, bytes]:
    return ("application/dicom", encoded(ds))


def stow(
    server: Server,
    body: bytes,
    *,
    content_type: str | None = MULTIPART,
    study: str | None = None,
    auth: tuple[str, str] | None = ADMIN,
) -> httpx.Response:
    path = "/dicomweb/studies" + (f"/{study}" if study else "")
    headers = {"Content-Type": content_type} if content_type else {}
    return httpx.post(server.base_url + path, content=body, headers=headers, auth=auth, timeout=60)


def failures(response: httpx.Response) -> list[dict[str, Any]]:
    return list(response.json().get(FAILED_SOP_SEQUENCE, {}).get("Value", []))


def referenced(response: httpx.Response) -> list[dict[str, Any]]:
    return list(response.json().get(REFERENCED_SOP_SEQUENCE, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def stored_row(server: Server, sop_instance_uid: str) -> Instance | None:
    with server.opened() as archive, archive.sessions() as session:
        return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def instance_count(server: Server) -> int:
    with server.opened() as archive, archive.sessions() as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def stored_bytes(server: Server, sop_instance_uid: str) -> bytes:
    row = stored_row(server, sop_instance_uid)
    assert row is not None, f"{sop_instance_uid} is not indexed"
    with server.opened() as archive, archive.blobs.open(row.blob_key) as fh:
        return fh.read()


def assert_nothing_half_stored(server: Server, count_before: int, *uids: str) -> None:
    staging = server.data_dir / "blobs" / ".staging"
    assert list(staging.iterdir()) == []
    assert instance_count(server) == count_before
    for uid in uids:
        assert stored_row(server, uid) is None, uid


def eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def create_user(server: Server, username: str, role: str) -> tuple[str, str]:
    password = f"{username}-password"
    response = httpx.post(
        f"{server.base_url}/api/users",
        json={"username": username, "password": password, "role": role},
        auth=ADMIN,
    )
    assert response.status_code == 201, response.text
    return username, password


def dicomweb_client(server: Server, auth: tuple[str, str] = ADMIN) -> DICOMwebClient:
    session = requests.Session()
    session.auth = auth
    return DICOMwebClient(url=f"{server.base_url}/dicomweb", session=session)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One archive for the module: each test stores instances of its own."""
    srv = Server(tmp_path_factory.mktemp("stow") / "pacs-data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An archive taking parts up to 100 kB and bodies up to 1 MB."""
    env = {"PACS_MAX_UPLOAD_PART_BYTES": "100000", "PACS_MAX_UPLOAD_BYTES": "1000000"}
    srv = Server(tmp_path_factory.mktemp("stow-small") / "pacs-data", extra_env=env)
    srv.start()
    yield srv
    srv.stop()


# --- what works, through dicomweb-client ----------------------------------------------------


def test_store_across_transfer_syntaxes(server: Server) -> None:
    datasets = [pydicom_file(name) for name in ACROSS_SYNTAXES]
    for name, ds in zip(ACROSS_SYNTAXES, datasets, strict=True):
        if name in RE_UID:
            with_new_uid(ds)
    sent = {str(ds.SOPInstanceUID): encoded(ds) for ds in datasets}

    result = dicomweb_client(server).store_instances(datasets)

    assert "FailedSOPSequence" not in result
    assert len(result.ReferencedSOPSequence) == len(datasets)
    for ds, item in zip(datasets, result.ReferencedSOPSequence, strict=True):
        uid = str(ds.SOPInstanceUID)
        assert item.ReferencedSOPInstanceUID == uid
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        series = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        assert urlsplit(item.RetrieveURL).path == f"{series}/instances/{uid}"
        assert "WarningReason" not in item
        row = stored_row(server, uid)
        assert row is not None
        assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert row.source_ae == "STOW"
        kept = stored_bytes(server, uid)
        assert kept == sent[uid], "stored byte for byte as received"
        assert row.sha256 == hashlib.sha256(kept).hexdigest()
        stored = dcmread(io.BytesIO(kept))
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert dataset_differences(stored, ds) == [], ds.filename


def test_store_the_samples_into_their_study(server: Server) -> None:
    mr_files = sorted((SAMPLES / "mr_brain").rglob("*.dcm"))
    mr = [dcmread(path) for path in mr_files]
    xa = [dcmread(path) for path in sorted((SAMPLES / "xa_coronary").rglob("*.dcm"))]
    study = str(mr[0].StudyInstanceUID)
    client = dicomweb_client(server)
    client.set_chunk_size(64 * 1024)  # a chunked request body, as for any large upload

    result = client.store_instances(mr, study_instance_uid=study)

    assert urlsplit(result.RetrieveURL).path == f"/dicomweb/studies/{study}"
    assert [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in mr
    ]
    for path in mr_files:
        original = dcmread(path)
        stored = dcmread(io.BytesIO(stored_bytes(server, str(original.SOPInstanceUID))))
        assert dataset_differences(stored, original) == [], path

    # The XA run is another study: refused by a store into the MR study, accepted without one.
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances(xa, study_instance_uid=study)
    assert refused.value.response.status_code == 409
    result = client.store_instances(xa)
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == xa[0].SOPInstanceUID


def test_storing_the_same_instance_again_is_a_success(server: Server) -> None:
    ds = new_instance()
    assert stow(server, multipart(dicom(ds))).status_code == 200

    again = stow(server, multipart(dicom(ds)))

    assert again.status_code == 200
    [item] = referenced(again)
    assert value(item, REFERENCED_SOP_INSTANCE) == ds.SOPInstanceUID
    assert WARNING_REASON not in item


def test_other_content_under_a_stored_uid_keeps_the_first_with_a_warning(server: Server) -> None:
    ds = new_instance()
    first = encoded(ds)
    assert stow(server, multipart(("application/dicom", first))).status_code == 200
    ds.PatientName = "Other^Content"

    response = stow(server, multipart(dicom(ds)))

    assert response.status_code == 202
    [item] = referenced(response)
    assert value(item, REFERENCED_SOP_INSTANCE) == ds.SOPInstanceUID
    assert value(item, WARNING_REASON) == ELEMENTS_DISCARDED
    assert "kept the first" in response.headers["warning"]
    assert stored_bytes(server, str(ds.SOPInstanceUID)) == first


# --- bad requests -----------------------------------------------------------------------------


def test_a_body_that_is_not_multipart(server: Server) -> None:
    before = instance_count(server)
    ds = new_instance()
    raw = encoded(ds)

    assert stow(server, raw, content_type="application/dicom").status_code == 415
    assert stow(server, raw, content_type=None).status_code == 400
    # Declared multipart, but the body holds no boundary at all.
    response = stow(server, raw)
    assert response.status_code == 400
    assert "no multipart boundary" in response.json()["detail"]
    assert_nothing_half_stored(server, before, str(ds.SOPInstanceUID))


def test_a_content_type_without_boundary(server: Server) -> None:
    before = instance_count(server)
    ds = new_instance()
    body = multipart(dicom(ds))

    response = stow(server, body, content_type='multipart/related; type="application/dicom"')

    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]
    assert_nothing_half_stored(server, before, str(ds.SOPInstanceUID))


def test_metadata_and_bulkdata_stow_is_refused(server: Server) -> None:
    for kind in ("application/dicom+json", "application/dicom+xml"):
        content_type = f'multipart/related; type="{kind}"; boundary={BOUNDARY}'
        response = stow(server, multipart((kind, b"[{}]")), content_type=content_type)
        assert response.status_code == 415
        assert "not supported" in response.json()["detail"]


def test_a_truncated_body_stores_the_complete_parts_only(server: Server) -> None:
    before = instance_count(server)
    whole, cut = new_instance(), new_instance()
    body = multipart(dicom(whole), dicom(cut), close=False)[:-2000]  # cut inside the 2nd part

    response = stow(server, body)

    assert response.status_code == 202
    assert [value(i, REFERENCED_SOP_INSTANCE) for i in referenced(response)] == [
        whole.SOPInstanceUID
    ]
    [failed] = failures(response)
    assert value(failed, REFERENCED_SOP_INSTANCE) == cut.SOPInstanceUID  # read from its header
    assert value(failed, FAILURE_REASON) == CANNOT_UNDERSTAND
    assert "ends inside part 2" in response.headers["warning"]
    assert_nothing_half_stored(server, before + 1, str(cut.SOPInstanceUID))


def test_a_body_cut_before_its_closing_boundary_fails_the_last_part(server: Server) -> None:
    before = instance_count(server)
    ds = new_instance()
    # Every byte of the instance arrived, but nothing says the part has ended.
    body = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + encoded(ds)

    response = stow(server, body)

    assert response.status_code == 400
    assert value(failures(response)[0], FAILURE_REASON) == CANNOT_UNDERSTAND
    assert_nothing_half_stored(server, before, str(ds.SOPInstanceUID))


def test_a_client_that_goes_away_mid_part_leaves_nothing_behind(server: Server) -> None:
    before = instance_count(server)
    whole, cut = new_instance(), new_instance()
    body = multipart(dicom(whole), dicom(cut))
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Basic {base64.b64encode(':'.join(ADMIN).encode()).decode()}\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(head + body[: len(body) - 5000])  # then hang up inside the second part

    staging = server.data_dir / "blobs" / ".staging"
    assert eventually(lambda: stored_row(server, str(whole.SOPInstanceUID)) is not None)
    assert eventually(lambda: not any(staging.iterdir()))
    assert_nothing_half_stored(server, before + 1, str(cut.SOPInstanceUID))


def test_garbage_after_a_boundary_is_a_bad_request(server: Server) -> None:
    before = instance_count(server)
    body = f"--{BOUNDARY}garbage\r\n\r\n".encode() + b"\0" * 1000

    response = stow(server, body)

    assert response.status_code == 400
    assert_nothing_half_stored(server, before)


def test_a_non_dicom_part_among_good_ones(server: Server) -> None:
    before = instance_count(server)
    good = [new_instance(), new_instance()]
    body = multipart(dicom(good[0]), ("text/plain", b"not an image"), dicom(good[1]))

    response = stow(server, body)

    assert response.status_code == 202
    assert [value(i, REFERENCED_SOP_INSTANCE) for i in referenced(response)] == [
        ds.SOPInstanceUID for ds in good
    ]
    [failed] = failures(response)
    assert value(failed, FAILURE_REASON) == CANNOT_UNDERSTAND
    assert "part 2: a text/plain part" in response.headers["warning"]
    assert instance_count(server) == before + 2


def test_when_every_part_fails_nothing_is_stored(server: Server) -> None:
    before = instance_count(server)
    truncated = new_instance()
    body = multipart(
        ("application/dicom", b"DICM but not really" * 100),
        ("application/dicom", encoded(truncated)[:-1000]),
        ("application/octet-stream", encoded(new_instance())),
    )

    response = stow(server, body)

    assert response.status_code == 409
    assert referenced(response) == []
    assert [value(item, FAILURE_REASON) for item in failures(response)] == [CANNOT_UNDERSTAND] * 3
    assert value(failures(response)[1], REFERENCED_SOP_INSTANCE) == truncated.SOPInstanceUID
    assert_nothing_half_stored(server, before, str(truncated.SOPInstanceUID))


def test_an_instance_of_another_study_is_refused(server: Server) -> None:
    before = instance_count(server)
    study = generate_uid()
    ours, theirs = new_instance(study), new_instance()

    response = stow(server, multipart(dicom(ours), dicom(theirs)), study=study)

    assert response.status_code == 202
    assert value(response.json(), RETRIEVE_URL) == f"{server.base_url}/dicomweb/studies/{study}"
    [stored] = referenced(response)
    assert value(stored, REFERENCED_SOP_INSTANCE) == ours.SOPInstanceUID
    [failed] = failures(response)
    assert value(failed, REFERENCED_SOP_INSTANCE) == theirs.SOPInstanceUID
    assert value(failed, REFERENCED_SOP_CLASS) == theirs.SOPClassUID
    assert value(failed, FAILURE_REASON) == MISMATCH
    assert_nothing_half_stored(server, before + 1, str(theirs.SOPInstanceUID))

    alone = stow(server, multipart(dicom(new_instance())), study=study)
    assert alone.status_code == 409
    assert stow(server, multipart(dicom(ours)), study="not-a-uid").status_code == 400


def test_store_needs_a_user_who_may_store(server: Server) -> None:
    before = instance_count(server)
    ds = new_instance()
    body = multipart(dicom(ds))

    anonymous = stow(server, body, auth=None)
    assert anonymous.status_code == 401
    assert "Basic" in anonymous.headers["www-authenticate"]
    assert stow(server, body, auth=("admin", "wrong")).status_code == 401
    assert stow(server, body, auth=create_user(server, "dr-who", "referring")).status_code == 403
    assert_nothing_half_stored(server, before, str(ds.SOPInstanceUID))

    assert stow(server, body, auth=create_user(server, "ct-room", "modality")).status_code == 200


def test_a_store_is_audited(server: Server) -> None:
    study = generate_uid()
    assert stow(server, multipart(dicom(new_instance(study))), study=study).status_code == 200

    def audit_event() -> AuditEvent | None:
        with server.opened() as archive, archive.sessions() as session:
            query = select(AuditEvent).where(AuditEvent.study_instance_uid == study)
            return session.scalar(query)

    assert eventually(lambda: audit_event() is not None)  # the trail is written in batches
    event = audit_event()
    assert event is not None
    assert (event.action, event.method, event.username, event.status) == (
        "store",
        "POST",
        "admin",
        200,
    )


# --- limits -----------------------------------------------------------------------------------


def test_a_part_over_the_limit_fails_alone(small_server: Server) -> None:
    before = instance_count(small_server)
    small, large = new_instance(), with_new_uid(pydicom_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert len(encoded(large)) > 100_000

    response = stow(small_server, multipart(dicom(large), dicom(small)))

    assert response.status_code == 202
    [failed] = failures(response)
    assert value(failed, REFERENCED_SOP_INSTANCE) == large.SOPInstanceUID
    assert value(failed, FAILURE_REASON) == OUT_OF_RESOURCES
    assert "over the limit of 100000 bytes" in response.headers["warning"]
    assert [value(i, REFERENCED_SOP_INSTANCE) for i in referenced(response)] == [
        small.SOPInstanceUID
    ]
    assert_nothing_half_stored(small_server, before + 1, str(large.SOPInstanceUID))

    only_large = stow(small_server, multipart(dicom(large)))
    assert only_large.status_code == 413
    assert_nothing_half_stored(small_server, before + 1, str(large.SOPInstanceUID))


def test_a_body_over_the_limit(small_server: Server) -> None:
    before = instance_count(small_server)
    many = [new_instance() for _ in range(30)]  # 30 x 39 kB: over 1 MB
    body = multipart(*(dicom(ds) for ds in many))
    assert len(body) > 1_000_000

    declared = stow(small_server, body)  # Content-Length says it: refused before reading
    assert declared.status_code == 413
    assert_nothing_half_stored(small_server, before, *(str(ds.SOPInstanceUID) for ds in many))

    def chunks() -> Iterator[bytes]:  # no Content-Length: stopped at the limit
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    streamed = httpx.post(
        f"{small_server.base_url}/dicomweb/studies",
        content=chunks(),
        headers={"Content-Type": MULTIPART},
        auth=ADMIN,
        timeout=60,
    )
    assert streamed.status_code == 202  # the parts before the limit are stored
    stored = [value(item, REFERENCED_SOP_INSTANCE) for item in referenced(streamed)]
    assert 20 <= len(stored) < 30
    assert stored == [ds.SOPInstanceUID for ds in many[: len(stored)]]
    [cut] = failures(streamed)
    assert value(cut, FAILURE_REASON) == OUT_OF_RESOURCES
    assert "body is over the limit" in streamed.headers["warning"]
    rest = [str(ds.SOPInstanceUID) for ds in many[len(stored) :]]
    assert_nothing_half_stored(small_server, before + len(stored), *rest)


# --- the streaming parser on its own -----------------------------------------------------------


def parse(body: bytes, chunk: int) -> list[tuple[dict[str, str], bytes]]:
    """Feed ``body`` in pieces of ``chunk`` bytes; return each part's headers and content."""
    parser = MultipartParser(BOUNDARY)
    parts: list[tuple[dict[str, str], bytearray]] = []
    ended = 0
    for start in range(0, len(body), chunk):
        for event in parser.feed(body[start : start + chunk]):
            if isinstance(event, PartStart):
                parts.append((event.headers, bytearray()))
            elif isinstance(event, PartData):
                assert len(event.data) < chunk + len(BOUNDARY) + 4  # never a whole part
                parts[-1][1].extend(event.data)
            else:
                assert isinstance(event, PartEnd)
                ended += 1
    parser.close()
    assert ended == len(parts)
    return [(headers, bytes(data)) for headers, data in parts]


@pytest.mark.parametrize("chunk", [1, 3, 70, 4096])
def test_parts_survive_any_chunking(chunk: int) -> None:
    delimiter = f"\r\n--{BOUNDARY}".encode()
    contents = [
        os.urandom(3000),
        b"",
        delimiter[:-1] + b"!",  # almost a delimiter
        b"--" + BOUNDARY.encode() + b"--",  # a boundary without the CRLF before it
        b"\r\n\r\n",
    ]
    body = b"a preamble\r\n" + multipart(*(("application/dicom", c) for c in contents))

    parts = parse(body + b"an epilogue", chunk)

    assert parts == [({"content-type": "application/dicom"}, c) for c in contents]


def test_padding_untyped_parts_and_folded_headers() -> None:
    body = (
        f"--{BOUNDARY}  \t\r\n\r\nno headers\r\n"
        f"--{BOUNDARY}\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2"
        f"\r\nContent-ID: <x>\r\n\r\nfolded\r\n--{BOUNDARY}--"
    ).encode()

    assert parse(body, 5) == [
        ({}, b"no headers"),
        (
            {
                "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2",
                "content-id": "<x>",
            },
            b"folded",
        ),
    ]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"no boundary anywhere", "no multipart boundary"),
        (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\ncut".encode(), "inside part 1"),
        (f"--{BOUNDARY}\r\nContent-Type: appl".encode(), "inside part 1"),
        (f"--{BOUNDARY}\r\n\r\nfirst\r\n--{BOUNDARY}\r\n".encode(), "inside part 2"),
        (f"--{BOUNDARY}x\r\n\r\n".encode(), "followed by something"),
        (f"--{BOUNDARY}\r\nno colon\r\n\r\n--{BOUNDARY}--".encode(), "malformed header"),
        (f"--{BOUNDARY}\r\nX: {'y' * 20000}".encode(), "headers over"),
    ],
)
def test_malformed_bodies_are_errors(body: bytes, error: str) -> None:
    with pytest.raises(MultipartError, match=error):
        parse(body, 1000)
