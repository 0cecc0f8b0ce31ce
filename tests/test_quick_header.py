"""The byte-level header reader gives the index exactly what pydicom gives it.

Every file pydicom ships (and sample_dicom/) is read both ways: through
storage.quick_header when it follows the file, and through pydicom. The index
values, transfer syntax and size must be equal, and a file one refuses the other
refuses too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from storage.header import Header, InvalidInstance, MismatchedInstance, read_header
from storage.quick_header import read_quick
from tests.conftest import SAMPLES

FILES = sorted(
    {Path(p) for p in get_testdata_files("*") if Path(p).is_file()} | set(SAMPLES.rglob("*.dcm"))
)


def outcome(path: Path, *, quick: bool) -> Header | type[Exception]:
    try:
        return read_header(path, quick=quick)
    except MismatchedInstance:
        return MismatchedInstance
    except InvalidInstance:
        return InvalidInstance


def follows(path: Path) -> bool:
    with path.open("rb") as fp:
        return read_quick(fp, path.stat().st_size) is not None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_both_readers_agree(path: Path) -> None:
    assert outcome(path, quick=True) == outcome(path, quick=False)


def test_the_quick_reader_takes_the_common_files() -> None:
    taken = [path for path in FILES if follows(path)]
    assert len(taken) > len(FILES) // 2
    assert all(follows(path) for path in SAMPLES.rglob("*.dcm"))


def test_truncated_and_mismatched_files(tmp_path: Path) -> None:
    source = next(SAMPLES.rglob("*.dcm"))
    data = source.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 900, 200, 140):
        truncated = tmp_path / f"cut-{cut}.dcm"
        truncated.write_bytes(data[:cut])
        assert outcome(truncated, quick=True) is InvalidInstance, cut
        assert outcome(truncated, quick=False) is InvalidInstance, cut
    ds = dcmread(source)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mismatched = tmp_path / "mismatched.dcm"
    ds.save_as(mismatched, enforce_file_format=False)
    assert outcome(mismatched, quick=True) is MismatchedInstance


def test_implicit_vr_and_sequences_with_inherited_character_set(tmp_path: Path) -> None:
    ds = dcmread(next(SAMPLES.rglob("*.dcm")))
    item = Dataset()
    item.PatientID = "Bệnh nhân 7"
    ds.OtherPatientIDsSequence = [item]
    ds.SpecificCharacterSet = "ISO_IR 192"
    for syntax in (ImplicitVRLittleEndian, ds.file_meta.TransferSyntaxUID):
        path = tmp_path / f"{syntax}.dcm"
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
        assert follows(path)
        quick = read_header(path)
        assert quick == read_header(path, quick=False)
        assert quick.record.patient["other_patient_ids"] == "Bệnh nhân 7"


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("CT_small.dcm", b"\x28\x00\x10\x00US\x02\x00"),  # explicit VR: tag, VR, 16-bit length
        ("MR_small_implicit.dcm", b"\x28\x00\x10\x00\x02\x00\x00\x00"),  # implicit: 32-bit
    ],
)
def test_a_value_of_the_wrong_length_is_absent_on_both_readers(
    tmp_path: Path, name: str, rows: bytes
) -> None:
    """Found by tests/test_fuzz_dicom.py: a US Rows of 3 bytes (PS3.5 6.2 says 2) made
    pydicom raise while the index values were extracted, and the C-STORE went
    unanswered. Both readers now index the rest and leave Rows out."""
    data = Path(str(get_testdata_file(name))).read_bytes()
    at = data.index(rows) + len(rows)
    odd = rows[:-2] + b"\x03\x00" if b"US" in rows else rows[:4] + b"\x03\x00\x00\x00"
    path = tmp_path / name
    path.write_bytes(data[: data.index(rows)] + odd + data[at : at + 2] + b"\x00" + data[at + 2 :])
    quick, full = read_header(path), read_header(path, quick=False)
    assert quick == full
    assert quick.record.instance["rows"] is None
