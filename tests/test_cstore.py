"""C-ECHO and C-STORE against a real ``pacs serve``, driven by DCMTK's echoscu/storescu.

Where storescu refuses to send a crafted bad file (it validates what it reads),
pynetdicom is the sender, streaming the file's bytes as they are.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    HTJ2K,
    CTImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import func, select

from storage import Archive
from storage.blobs import blob_key
from storage.models import Instance, Patient, Series, Study
from tests.conftest import SAMPLES, Server, dataset_differences, require_tool, run

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DUPLICATE_KEPT_FIRST = 0xB006
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # a vendor-private storage SOP class


# --- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreResponse:
    sop_instance_uid: str
    status: int
    error_comment: str


def storescu(server: Server, *args: str | Path) -> list[StoreResponse]:
    """Push files with DCMTK storescu (debug output) and return every C-STORE response.

    ``-nh`` keeps storescu going after a failure, so later files travel in the
    same association as a rejected one.
    """
    tool = require_tool("storescu")
    done = run(
        [tool, "-d", "-nh", "-aec", "PACS", "127.0.0.1", str(server.dicom_port)]
        + [str(arg) for arg in args]
    )
    assert "Association Accepted" in done.stderr + done.stdout, done.stderr[-3000:]
    return parse_store_responses(done.stdout + done.stderr)


def parse_store_responses(output: str) -> list[StoreResponse]:
    responses = []
    for block in output.split("Message Type                  : C-STORE RSP")[1:]:
        block = block.split("OUTGOING DIMSE MESSAGE")[0]
        uid = re.search(r"Affected SOP Instance UID\s*: (\S+)", block)
        status = re.search(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})", block)
        comment = re.search(r"\(0000,0902\) LO \[(.*?)\]\s+#", block)
        assert uid and status, block
        text = comment.group(1) if comment else ""
        responses.append(StoreResponse(uid.group(1), int(status.group(1), 16), text))
    return responses


@contextmanager
def association(server: Server, *contexts: tuple[str, str]) -> Iterator[Association]:
    """A pynetdicom association to the archive (called AE title PACS)."""
    ae = AE(ae_title="PYNETDICOM")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def stored_instance(archive: Archive, sop_instance_uid: str) -> Instance | None:
    with archive.sessions() as session:
        return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def stored_path(archive: Archive, sop_instance_uid: str) -> Path:
    row = stored_instance(archive, sop_instance_uid)
    assert row is not None, f"{sop_instance_uid} is not indexed"
    path = archive.blobs.local_path(row.blob_key)
    assert path is not None and path.is_file()
    return path


def comparable(ds: Dataset) -> Dataset:
    """``ds`` without what a sender may re-encode: DCMTK's storescu drops Data Set Trailing
    Padding (FFFC,FFFC), recomputes group lengths (gggg,0000; retired outside the command
    set) and writes encapsulated Pixel Data as OB (PS3.5 A.4), all as the standard allows.
    That the archive itself keeps every byte is shown by the byte-for-byte test, whose
    sender sends the file's bytes untouched."""
    for elem in list(ds):
        if elem.tag == 0xFFFCFFFC or elem.tag.element == 0:
            del ds[elem.tag]
    if ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        ds["PixelData"].VR = "OB"
    return ds


def assert_stored_as_sent(archive: Archive, original: Path) -> Path:
    """The stored file holds the original's data set, element by element, in its transfer
    syntax (no re-encoding), and the index has its hash and syntax. Returns its path."""
    want = comparable(dcmread(original))
    path = stored_path(archive, str(want.SOPInstanceUID))
    got = comparable(dcmread(path))
    syntax = want.file_meta.TransferSyntaxUID
    assert got.file_meta.TransferSyntaxUID == syntax, "the archive re-encoded the instance"
    row = stored_instance(archive, str(want.SOPInstanceUID))
    assert row is not None and row.transfer_syntax_uid == syntax
    assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row.file_size == path.stat().st_size
    assert dataset_differences(got, want) == []
    return path


def assert_nothing_left(archive: Archive, *sop_instance_uids: str) -> None:
    """No index row and no blob for these UIDs, no orphan file, an empty staging folder."""
    with archive.sessions() as session:
        rows = session.scalars(
            select(Instance.sop_instance_uid).where(
                Instance.sop_instance_uid.in_(sop_instance_uids)
            )
        ).all()
        indexed_keys = set(session.scalars(select(Instance.blob_key)).all())
    assert rows == []
    for uid in sop_instance_uids:
        assert not archive.blobs.exists(blob_key(uid))
    assert set(archive.blobs.iter_keys()) == indexed_keys
    assert list(archive.blobs.staging_dir().iterdir()) == []


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not among pydicom's bundled test files"
    return Path(path)


def ct_copy(folder: Path, name: str, **changes: object) -> Path:
    """CT_small with fresh SOP/Series/Study Instance UIDs, then ``changes`` applied."""
    ds = dcmread(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    path = folder / name
    ds.save_as(path, enforce_file_format=False)
    return path


def dataset_offset(path: Path) -> int:
    """Where the data set starts: after the preamble, 'DICM' and the file meta group."""
    group_length = dcmread(path, stop_before_pixels=True).file_meta.FileMetaInformationGroupLength
    return 128 + 4 + 12 + int(group_length)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One archive for the module; every test sends instances with UIDs of its own."""
    srv = Server(tmp_path_factory.mktemp("cstore") / "pacs-data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's data set bytes exactly as they are in the file."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


# --- C-ECHO --------------------------------------------------------------------------------


def test_echoscu_succeeds(pacs: Server) -> None:
    echo = run([require_tool("echoscu"), "-v", "-aec", "PACS", "127.0.0.1", str(pacs.dicom_port)])
    assert echo.returncode == 0, echo.stderr
    assert "Received Echo Response (Success)" in echo.stdout + echo.stderr


def test_echoscu_to_another_called_ae_title_is_rejected(pacs: Server) -> None:
    echo = run([require_tool("echoscu"), "-aec", "NOTPACS", "127.0.0.1", str(pacs.dicom_port)])
    assert echo.returncode != 0
    assert "Association Rejected" in echo.stdout + echo.stderr


# --- every transfer syntax, stored as received ------------------------------------------

# (storescu proposal option, pydicom test files in that syntax). Within the module each
# instance needs a SOP Instance UID of its own; several pydicom files share one, so those
# marked in SHARED_UID are sent as copies with a fresh one.
SYNTAX_CASES = {
    "implicit-little-endian": ("-xi", ["SC_rgb_jpeg_dcmd.dcm", "MR_small_implicit.dcm"]),
    "explicit-little-endian": ("-xe", ["CT_small.dcm", "SC_ybr_full_422_uncompressed.dcm"]),
    "explicit-big-endian": ("-xb", ["SC_rgb_small_odd_big_endian.dcm", "liver_expb_1frame.dcm"]),
    "deflated": ("-xd", ["image_dfl.dcm"]),
    "jpeg-baseline": ("-xy", ["SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm"]),
    "jpeg-extended": ("-xx", ["JPGExtended.dcm"]),
    "jpeg-lossless-sv1": ("-xs", ["SC_rgb_jpeg_gdcm.dcm"]),
    "jpeg-ls-lossless": ("-xt", ["MR_small_jpeg_ls_lossless.dcm"]),
    "jpeg-ls-near-lossless": ("-xu", ["JPEGLSNearLossless_16.dcm", "JPEGLSNearLossless_08.dcm"]),
    "jpeg2000-lossless": ("-xv", ["GDCMJ2K_TextGBR.dcm", "MR_small_jp2klossless.dcm"]),
    "jpeg2000": ("-xw", ["JPEG2000.dcm", "693_J2KI.dcm"]),
    "rle": ("-xr", ["MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"]),
}
SHARED_UID = {
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
}


def sendable_copy(name: str, folder: Path) -> Path:
    """The pydicom test file itself, or a copy with a fresh SOP Instance UID (SHARED_UID)
    or with the Study/Series Instance UIDs the archive requires added (pydicom's JPEG-LS
    near-lossless files lack them). pydicom writes such a copy in the file's own transfer
    syntax and leaves the encapsulated pixel data untouched."""
    original = pydicom_file(name)
    ds = dcmread(original)
    missing = "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds
    if name not in SHARED_UID and not missing:
        return original
    if name in SHARED_UID:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if missing:
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


@pytest.mark.parametrize("case", list(SYNTAX_CASES))
def test_storescu_stores_each_transfer_syntax_as_received(
    pacs: Server, case: str, tmp_path: Path
) -> None:
    option, names = SYNTAX_CASES[case]
    files = [sendable_copy(name, tmp_path) for name in names]
    # -R: propose only the files' own SOP classes; with the option, in their own syntax.
    responses = storescu(pacs, "-R", option, *files)
    assert [r.status for r in responses] == [STATUS_SUCCESS] * len(files), responses
    with pacs.opened() as archive:
        for path in files:
            assert_stored_as_sent(archive, path)
        assert_nothing_left(archive)


@pytest.fixture(scope="module")
def pacs_verbatim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second archive, so the same files can arrive once more from another sender."""
    srv = Server(tmp_path_factory.mktemp("verbatim") / "pacs-data")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.usefixtures("chunked_send")
@pytest.mark.parametrize("case", list(SYNTAX_CASES))
def test_data_set_bytes_are_stored_byte_for_byte(
    pacs_verbatim: Server, case: str, tmp_path: Path
) -> None:
    """pynetdicom, streaming the file's data set bytes untouched: the stored file's data
    set is those very bytes (storescu re-serialises, so it cannot show this)."""
    files = [sendable_copy(name, tmp_path) for name in SYNTAX_CASES[case][1]]
    metas = [dcmread(path, stop_before_pixels=True).file_meta for path in files]
    contexts = {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}

    with association(pacs_verbatim, *sorted(contexts)) as assoc:
        statuses = [assoc.send_c_store(path).Status for path in files]

    assert statuses == [STATUS_SUCCESS] * len(files)
    with pacs_verbatim.opened() as archive:
        for path, meta in zip(files, metas, strict=True):
            stored = stored_path(archive, str(meta.MediaStorageSOPInstanceUID))
            sent = path.read_bytes()[dataset_offset(path) :]
            assert stored.read_bytes()[dataset_offset(stored) :] == sent
            assert dcmread(stored).file_meta.TransferSyntaxUID == meta.TransferSyntaxUID


def test_htj2k_transfer_syntaxes_are_accepted(pacs: Server) -> None:
    """DCMTK 3.6.7 cannot send HTJ2K and no HTJ2K-encoded file is available offline
    (pydicom cannot encode it), so this proves the negotiation only."""
    syntaxes = [HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K]
    with association(pacs, *[(CTImageStorage, syntax) for syntax in syntaxes]) as assoc:
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    assert accepted == set(syntaxes)


# storescu only sends SOP classes it knows, unless a configuration profile names them.
PRIVATE_PROFILE = f"""
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[Private]
PresentationContext1 = {SIEMENS_CSA_NON_IMAGE}\\Uncompressed
[[Profiles]]
[Private]
PresentationContexts = Private
"""


def test_vendor_private_sop_class_is_stored(pacs: Server, tmp_path: Path) -> None:
    path = ct_copy(tmp_path, "private.dcm", SOPClassUID=SIEMENS_CSA_NON_IMAGE)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = SIEMENS_CSA_NON_IMAGE
    ds.save_as(path, enforce_file_format=True)
    config = tmp_path / "storescu.cfg"
    config.write_text(PRIVATE_PROFILE)

    responses = storescu(pacs, "-xf", config, "Private", path)

    assert [r.status for r in responses] == [STATUS_SUCCESS]
    with pacs.opened() as archive:
        assert_stored_as_sent(archive, path)
        row = stored_instance(archive, str(ds.SOPInstanceUID))
        assert row is not None and row.sop_class_uid == SIEMENS_CSA_NON_IMAGE


# --- bad input: a failure with a reason, nothing stored, the association goes on ------------

BAD_UIDS = {"letters": "1.2.840.abc.7", "too-long": "1.2." + "3" * 70, "empty-component": "1..2"}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize("kind", list(BAD_UIDS))
def test_malformed_uid_is_rejected(pacs: Server, tmp_path: Path, keyword: str, kind: str) -> None:
    bad = ct_copy(tmp_path, "bad.dcm", **{keyword: BAD_UIDS[kind]})
    if keyword == "SOPInstanceUID":
        ds = dcmread(bad)
        ds.file_meta.MediaStorageSOPInstanceUID = BAD_UIDS[kind]
        ds.save_as(bad, enforce_file_format=False)
    announced = str(dcmread(bad).SOPInstanceUID)[:64]  # storescu cuts a long UID to 64
    good = ct_copy(tmp_path, "good.dcm")

    bad_response, good_response = storescu(pacs, bad, good)

    assert bad_response.status == STATUS_CANNOT_UNDERSTAND
    assert keyword in bad_response.error_comment
    assert good_response.status == STATUS_SUCCESS
    with pacs.opened() as archive:
        assert_nothing_left(archive, announced)
        with archive.sessions() as session:
            uids = {
                *session.scalars(select(Study.study_instance_uid)).all(),
                *session.scalars(select(Series.series_instance_uid)).all(),
            }
        assert BAD_UIDS[kind] not in uids
        assert_stored_as_sent(archive, good)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_study_or_series_uid_is_rejected(
    pacs: Server, tmp_path: Path, keyword: str
) -> None:
    bad = ct_copy(tmp_path, "bad.dcm", **{keyword: None})
    good = ct_copy(tmp_path, "good.dcm")

    bad_response, good_response = storescu(pacs, bad, good)

    assert bad_response.status == STATUS_CANNOT_UNDERSTAND
    assert keyword in bad_response.error_comment
    assert good_response.status == STATUS_SUCCESS
    with pacs.opened() as archive:
        assert_nothing_left(archive, str(dcmread(bad).SOPInstanceUID))
        assert_stored_as_sent(archive, good)


def _non_dicom(path: Path) -> None:
    """Keep the file meta, replace the data set with random bytes."""
    keep = path.read_bytes()[: dataset_offset(path)]
    path.write_bytes(keep + random.Random(2).randbytes(8192))


def _truncated(path: Path) -> None:
    """Cut the file in the middle of its pixel data."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10_000])


def _without_sop_instance_uid(path: Path) -> None:
    ds = dcmread(path)
    del ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=False)


def _other_sop_instance_uid(path: Path) -> None:
    """The data set's SOP Instance UID is not the one the file meta announces."""
    ds = dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=False)


@pytest.mark.usefixtures("chunked_send")
@pytest.mark.parametrize(
    ("spoil", "status", "reason"),
    [
        (_non_dicom, STATUS_CANNOT_UNDERSTAND, ""),
        (_truncated, STATUS_CANNOT_UNDERSTAND, "truncated"),
        (_without_sop_instance_uid, STATUS_CANNOT_UNDERSTAND, "SOPInstanceUID"),
        (_other_sop_instance_uid, STATUS_MISMATCH, "SOPInstanceUID"),
    ],
    ids=["non-dicom-bytes", "truncated-in-pixel-data", "missing-sop-uid", "sop-uid-mismatch"],
)
def test_bad_dataset_is_rejected_and_the_association_goes_on(
    pacs: Server, tmp_path: Path, spoil: Callable[[Path], None], status: int, reason: str
) -> None:
    bad = ct_copy(tmp_path, "bad.dcm")
    announced = str(dcmread(bad).file_meta.MediaStorageSOPInstanceUID)
    spoil(bad)
    good = ct_copy(tmp_path, "good.dcm")

    with association(pacs, (CTImageStorage, ExplicitVRLittleEndian)) as assoc:
        rejected = assoc.send_c_store(bad)
        accepted = assoc.send_c_store(good)

    assert rejected.Status == status
    assert rejected.get("ErrorComment", "").strip() != ""
    assert reason in rejected.ErrorComment
    assert accepted.Status == STATUS_SUCCESS
    with pacs.opened() as archive:
        assert_nothing_left(archive, announced)
        assert_stored_as_sent(archive, good)


# --- duplicates ------------------------------------------------------------------------------


def test_same_instance_twice_is_an_idempotent_success(pacs: Server, tmp_path: Path) -> None:
    path = ct_copy(tmp_path, "ct.dcm")
    uid = str(dcmread(path).SOPInstanceUID)

    first = storescu(pacs, path)
    second = storescu(pacs, path)

    assert [r.status for r in first + second] == [STATUS_SUCCESS, STATUS_SUCCESS]
    with pacs.opened() as archive, archive.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(Instance).where(Instance.sop_instance_uid == uid)
        )
        assert count == 1
        series = session.scalar(
            select(Series).where(Series.series_instance_uid == dcmread(path).SeriesInstanceUID)
        )
        assert series is not None and series.number_of_instances == 1


def test_same_uid_other_content_keeps_the_first_with_a_warning(
    pacs: Server, tmp_path: Path
) -> None:
    first = ct_copy(tmp_path, "first.dcm")
    ds = dcmread(first)
    ds.PatientName = "Other^Content"
    second = tmp_path / "second.dcm"
    ds.save_as(second, enforce_file_format=True)

    assert [r.status for r in storescu(pacs, first)] == [STATUS_SUCCESS]
    with pacs.opened() as archive:
        kept = stored_path(archive, str(ds.SOPInstanceUID)).read_bytes()

    (warning,) = storescu(pacs, second)

    assert warning.status == STATUS_DUPLICATE_KEPT_FIRST
    assert warning.error_comment != ""
    with pacs.opened() as archive:
        assert stored_path(archive, str(ds.SOPInstanceUID)).read_bytes() == kept
        assert_stored_as_sent(archive, first)
        assert_nothing_left(archive)  # no orphan blob, empty staging


# --- patient names -----------------------------------------------------------------------------


def test_vietnamese_patient_name_round_trip(pacs: Server) -> None:
    files = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))
    assert len(files) == 24

    responses = storescu(pacs, *files)

    assert [r.status for r in responses] == [STATUS_SUCCESS] * len(files)
    first = dcmread(files[0], stop_before_pixels=True)
    with pacs.opened() as archive, archive.sessions() as session:
        patient = session.scalar(select(Patient).where(Patient.patient_id == first.PatientID))
        assert patient is not None
        assert patient.patient_name == "Nguyễn^Văn An"
        assert patient.patient_name_key == "nguyen^van an"
        study = session.scalar(
            select(Study).where(Study.study_instance_uid == first.StudyInstanceUID)
        )
        assert study is not None and study.number_of_instances == 24
    with pacs.opened() as archive:
        assert_stored_as_sent(archive, files[0])
