"""Fuzzing both network doors into the archive with hypothesis: valid DICOM files
(pydicom's test files and the sample studies) are mutated (bit flips, truncation,
inserted junk, deleted runs, corrupted element length fields, a transfer syntax
that is not the one the bytes are in) and sent to a real ``pacs serve`` over
C-STORE (the lean SCP and the pynetdicom path) and STOW-RS.

After every case: the server still answers C-ECHO; it logged no traceback; either
the answer was a success and the instance is indexed and its stored file parses,
or it was a warning or failure and nothing new is in the blob store or the index,
and no staged file is left behind (SPEC: "Bad input ... changes nothing stored").

The number of cases is bounded by a hypothesis profile (``PACS_FUZZ_PROFILE``: ``ci``,
the default, keeps the module under a minute; ``long`` runs many more), and the
count of cases and their outcomes is reported at the end of the module.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification
from sqlalchemy import func, select

from pacs.store_scp import UNEXPECTED_FAILURE
from storage import Archive
from storage.blobs import blob_key
from storage.models import Instance
from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server

settings.register_profile(
    "ci",
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=3000)
FUZZ = settings.get_profile(os.environ.get("PACS_FUZZ_PROFILE", "ci"))

SEED_FILES = [
    get_testdata_file("CT_small.dcm"),  # explicit VR little endian
    get_testdata_file("MR_small_implicit.dcm"),  # implicit VR little endian
    get_testdata_file("MR_small_bigendian.dcm"),  # explicit VR big endian
    get_testdata_file("image_dfl.dcm"),  # deflated
    get_testdata_file("SC_rgb_rle.dcm"),  # RLE, encapsulated
    get_testdata_file("JPEG2000.dcm"),  # JPEG 2000, encapsulated
    SAMPLES / "ct_latin1" / "series1" / "001.dcm",  # ISO_IR 100 names, implicit VR
    SAMPLES / "mr_brain" / "series1" / "001.dcm",  # JPEG-LS, UTF-8 names
]
SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    JPEGLSLossless,
]
# Each seed's Study, Series and SOP Instance UIDs are replaced by these 64-character
# placeholders, so a case gets fresh UIDs by replacing bytes of the same length.
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_PLACEHOLDERS = tuple(f"2.25.{n}{'0' * 57}" for n in (11, 22, 33))
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
SUCCESS, NOT_UNDERSTOOD = 0x0000, 0xC000
WARNINGS = {0x0001, 0xB000, 0xB006, 0xB007}

outcomes: Counter[str] = Counter()  # "door status" -> cases


# --- seeds and mutations ----------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """A valid Part 10 file with placeholder UIDs, and where its length fields are."""

    name: str
    sop_class: str
    syntax: UID
    data: bytes
    dataset_offset: int
    length_fields: tuple[tuple[int, int], ...]  # (offset in data, width in bytes)

    def renewed(self) -> tuple[bytes, str]:
        """The file with fresh UIDs, and its SOP Instance UID."""
        # secrets, not random: hypothesis seeds ``random`` alike for every example
        fresh = [f"2.25.{10**58 + secrets.randbelow(9 * 10**58)}" for _ in _PLACEHOLDERS]
        if self.syntax == DeflatedExplicitVRLittleEndian:  # compressed: re-encode
            ds = dcmread(io.BytesIO(self.data))
            for keyword, uid in zip(_UID_KEYWORDS, fresh, strict=True):
                setattr(ds, keyword, uid)
            ds.file_meta.MediaStorageSOPInstanceUID = fresh[2]
            with io.BytesIO() as out:
                dcmwrite(out, ds)
                return out.getvalue(), fresh[2]
        data = self.data
        for placeholder, uid in zip(_PLACEHOLDERS, fresh, strict=True):
            data = data.replace(placeholder.encode(), uid.encode())
        return data, fresh[2]


def _seed(path: str | Path | None) -> Seed:
    assert path is not None
    ds = dcmread(path)
    for keyword, placeholder in zip(_UID_KEYWORDS, _PLACEHOLDERS, strict=True):
        setattr(ds, keyword, placeholder)
    ds.file_meta.MediaStorageSOPInstanceUID = _PLACEHOLDERS[2]
    with io.BytesIO() as out:
        dcmwrite(out, ds)
        data = out.getvalue()
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    # The File Meta Information is explicit VR little endian (PS3.10 7.1); a deflated
    # data set has no element headers to aim at.
    fields = _length_fields(data, 132, implicit=False, little=True, meta=True)
    if syntax != DeflatedExplicitVRLittleEndian:
        fields += _length_fields(
            data, dataset_offset(data), syntax.is_implicit_VR, syntax.is_little_endian
        )
    name = Path(path).parent.parent.name if Path(path).parent.name == "series1" else Path(path).name
    return Seed(name, str(ds.SOPClassUID), syntax, data, dataset_offset(data), tuple(fields))


def dataset_offset(data: bytes) -> int:
    """Where the data set starts: after the preamble, "DICM" and the meta group, whose
    first element is its group length (PS3.10 7.1)."""
    return 132 + 12 + int(struct.unpack_from("<I", data, 140)[0])


def _length_fields(
    data: bytes, start: int, implicit: bool, little: bool, meta: bool = False
) -> list[tuple[int, int]]:
    """Where the top-level elements' length fields are (PS3.5 7.1.2, 7.1.3)."""
    fp = io.BytesIO(data)
    fp.seek(start)
    stop = (lambda tag, *_: tag.group != 2) if meta else None
    elements = data_element_generator(fp, implicit, little, defer_size=1, stop_when=stop)
    fields = []
    for element in elements:
        width = 4 if implicit or element.VR in _LONG_VRS else 2
        # an undefined-length sequence comes back parsed, as a DataElement
        value_at = getattr(element, "value_tell", None) or element.file_tell
        fields.append((value_at - width, width))
    return fields


SEEDS = [_seed(path) for path in SEED_FILES]


@dataclass(frozen=True)
class Case:
    seed: int
    fresh_uids: bool
    lengths: tuple[tuple[int, int], ...]  # (length field index, new value)
    edits: tuple[tuple[str, int, int, bytes], ...]  # (kind, position, amount, junk)
    syntax: UID | None  # the transfer syntax claimed instead of the real one
    lean: bool  # C-STORE: a storage-only association (lean SCP), else pynetdicom's


VALID = Case(0, True, (), (), None, lean=True)  # CT_small as it is, with fresh UIDs

_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(1, 255), st.just(b"")),
    st.tuples(st.just("truncate"), st.integers(0, 2**31), st.just(0), st.just(b"")),
    st.tuples(
        st.just("insert"), st.integers(0, 2**31), st.just(0), st.binary(min_size=1, max_size=40)
    ),
    st.tuples(st.just("delete"), st.integers(0, 2**31), st.integers(1, 64), st.just(b"")),
)
_length = st.tuples(
    st.integers(0, 2**31),
    st.one_of(
        st.sampled_from([0, 1, 3, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF]), st.integers(0, 2**32 - 1)
    ),
)
cases = st.builds(
    Case,
    seed=st.integers(0, len(SEEDS) - 1),
    fresh_uids=st.booleans(),
    lengths=st.lists(_length, max_size=2).map(tuple),
    edits=st.lists(_edit, max_size=3).map(tuple),
    syntax=st.one_of(st.none(), st.none(), st.sampled_from(SYNTAXES)),
    lean=st.booleans(),
)


def mutated(case: Case, data: bytes, start: int) -> bytes:
    """``data[start:]`` with the case's length-field corruptions, then its edits."""
    seed = SEEDS[case.seed]
    body = bytearray(data)
    for index, value in case.lengths:
        if seed.length_fields:
            offset, width = seed.length_fields[index % len(seed.length_fields)]
            if offset >= start:
                little = seed.syntax.is_little_endian or offset < seed.dataset_offset
                fmt = ("<" if little else ">") + ("I" if width == 4 else "H")
                struct.pack_into(fmt, body, offset, value % (1 << (8 * width)))
    body = body[start:]
    for kind, position, amount, junk in case.edits:
        at = position % (len(body) + 1)
        if kind == "flip" and body:
            body[at % len(body)] ^= amount
        elif kind == "truncate":
            del body[at:]
        elif kind == "insert":
            body[at:at] = junk
        elif kind == "delete":
            del body[at : at + amount]
    return bytes(body)


def with_syntax(data: bytes, syntax: UID) -> bytes:
    """A Part 10 file claiming ``syntax`` in its File Meta Information (PS3.10 7.1)."""
    meta = FileMetaDataset(dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta)
    meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + data[dataset_offset(data) :]


# --- the server and what it holds --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("fuzz") / "pacs-data", {"PACS_FORWARD_WORKERS": "0"})
    srv.start()
    yield srv
    srv.stop()
    summary = ", ".join(f"{key}: {n}" for key, n in sorted(outcomes.items()))
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nDICOM fuzz: {sum(outcomes.values())} cases ({summary})")


@pytest.fixture(scope="module")
def archive(server: Server) -> Iterator[Archive]:
    with server.opened() as opened:
        yield opened


@dataclass(frozen=True)
class Holdings:
    instances: int
    blobs: frozenset[str]
    log_size: int


def holdings(server: Server, archive: Archive) -> Holdings:
    with archive.sessions() as session:
        count = int(session.scalar(select(func.count(Instance.id))) or 0)
    return Holdings(count, frozenset(archive.blobs.iter_keys()), server.log.stat().st_size)


def assert_settled(
    server: Server, archive: Archive, before: Holdings, stored_uid: str | None
) -> None:
    """The invariants after one case; ``stored_uid``: the instance reported stored."""
    assert echo(server), "the server stopped answering C-ECHO"
    staging = archive.blobs.staging_dir()
    deadline = time.monotonic() + 5
    while any(staging.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)  # pynetdicom removes its received file after answering
    assert not any(staging.iterdir()), list(staging.iterdir())
    after = holdings(server, archive)
    with server.log.open("rb") as log:
        log.seek(before.log_size)
        new_log = log.read().decode(errors="replace")
    assert "Traceback" not in new_log, new_log
    new_blobs = after.blobs - before.blobs
    if stored_uid is None:
        assert after.instances == before.instances and not new_blobs
        return
    assert new_blobs <= {blob_key(stored_uid)}
    assert after.instances == before.instances + len(new_blobs)
    with archive.sessions() as session:
        row = session.scalar(select(Instance).where(Instance.sop_instance_uid == stored_uid))
    assert row is not None, f"{stored_uid} reported stored but not indexed"
    path = archive.blobs.local_path(row.blob_key)
    assert path is not None
    assert str(dcmread(path).SOPInstanceUID) == stored_uid


def echo(server: Server) -> bool:
    ae = AE("FUZZECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == SUCCESS


# --- C-STORE ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sender(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where each case's file is written for pynetdicom, which then sends the bytes
    after its File Meta Information as they are (``STORE_SEND_CHUNKED_DATASET``)."""
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield tmp_path_factory.mktemp("fuzz-send") / "case.dcm"
    _config.STORE_SEND_CHUNKED_DATASET = chunked


def c_store(
    server: Server, sender: Path, file: bytes, sop_class: str, syntax: UID, lean: bool
) -> int:
    """C-STORE the data set of ``file`` untouched, on a context in ``syntax`` (the one
    its File Meta Information names); the response status."""
    sender.write_bytes(file)
    ae = AE("FUZZSCU")
    ae.dimse_timeout = 30  # a missing answer fails the case instead of hanging it
    ae.add_requested_context(sop_class, syntax)
    if not lean:  # a query context sends the association to pynetdicom (pacs.listener)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    response = assoc.send_c_store(sender)
    if assoc.is_established:
        assoc.release()
    assert response, "no C-STORE response"
    return int(response.Status)


@FUZZ
@given(case=cases)
# Found by this test: a US value of 3 bytes made header extraction raise (no answer on
# the lean path, 0xC211 on pynetdicom's); tests/test_quick_header.py has the unit test.
@example(Case(1, False, (), (("flip", 1092, 1, b""),), None, lean=True))
@example(Case(1, False, (), (("flip", 1092, 1, b""),), None, lean=False))
@example(VALID)  # the success branch, every run
@example(replace(VALID, lean=False))
def test_c_store_of_mutated_files(
    server: Server, archive: Archive, sender: Path, case: Case
) -> None:
    """The data set is mutated; the File Meta Information, which C-STORE does not
    send, only names the SOP Instance UID announced and the context's syntax."""
    note(f"{SEEDS[case.seed].name}: {case!r}")
    seed = SEEDS[case.seed]
    data, uid = seed.renewed() if case.fresh_uids else (seed.data, _PLACEHOLDERS[2])
    offset = dataset_offset(data)
    claimed = with_syntax(data, case.syntax) if case.syntax else data
    file = claimed[: dataset_offset(claimed)] + mutated(case, data, offset)
    before = holdings(server, archive)
    status = c_store(server, sender, file, seed.sop_class, case.syntax or seed.syntax, case.lean)
    outcomes[f"C-STORE {status:04X}"] += 1
    assert status != UNEXPECTED_FAILURE, "the server failed on it (see its log)"
    assert status == SUCCESS or status in WARNINGS or status >= 0xA000, f"{status:04X}"
    assert_settled(server, archive, before, uid if status == SUCCESS else None)


# --- STOW-RS ------------------------------------------------------------------------------------


BOUNDARY = "fuzz-boundary-7d3e"


def stow(server: Server, part: bytes) -> httpx.Response:
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    return httpx.post(
        f"{server.base_url}/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type},
        auth=("admin", ADMIN_PASSWORD),
        timeout=60,
    )


@FUZZ
@given(case=cases)
@example(VALID)
def test_stow_of_mutated_files(server: Server, archive: Archive, case: Case) -> None:
    note(f"{SEEDS[case.seed].name}: {case!r}")
    seed = SEEDS[case.seed]
    data = seed.renewed()[0] if case.fresh_uids else seed.data
    if case.syntax is not None:
        data = with_syntax(data, case.syntax)
    part = mutated(case, data, 0)
    before = holdings(server, archive)
    response = stow(server, part)
    outcomes[f"STOW-RS {response.status_code}"] += 1
    assert response.status_code in (200, 202, 400, 409), (response.status_code, response.text)
    stored = None
    if response.status_code == 200:
        items = response.json()["00081199"]["Value"]
        assert len(items) == 1
        stored = items[0]["00081155"]["Value"][0]
    assert_settled(server, archive, before, stored)
