"""The ingest door, the index and the check, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import delete, func, select

from storage import Archive, DuplicatePolicy, Outcome, Problem, Source
from storage.check import check, rebuild
from storage.index import remove_instance
from storage.models import Instance, Patient, Series, Study
from tests.conftest import SAMPLES

CT_SLICES = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def count(archive: Archive, model: type) -> int:
    with archive.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def staged_files(archive: Archive) -> list[Path]:
    return list(archive.blobs.staging_dir().iterdir())


def test_a_study_is_stored_byte_for_byte_and_indexed(archive: Archive) -> None:
    for path in CT_SLICES:
        assert archive.ingest(path).outcome is Outcome.STORED
    with archive.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.number_of_series == 1
        assert study.number_of_instances == len(CT_SLICES)
        assert study.modalities_in_study == "CT"
        assert study.patient.patient_name == "Nguyễn^Văn An"
        assert study.patient.patient_name_key == "nguyen^van an"
        assert study.patient.issuer == "BV-TINH-HAGIANG"
        instance = session.scalars(select(Instance).order_by(Instance.instance_number)).first()
        assert instance is not None
        original = CT_SLICES[0].read_bytes()
        stored_path = archive.blobs.local_path(instance.blob_key)
        assert stored_path is not None and stored_path.read_bytes() == original
        assert instance.sha256 == hashlib.sha256(original).hexdigest()
        assert instance.file_size == len(original)
        assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert not staged_files(archive)


def test_blob_paths_come_from_a_hash_not_the_uid(archive: Archive) -> None:
    archive.ingest(CT_SLICES[0])
    with archive.sessions() as session:
        instance = session.scalars(select(Instance)).one()
    assert instance.sop_instance_uid not in instance.blob_key
    assert len(Path(instance.blob_key).stem) == 64


def test_compressed_instances_keep_their_transfer_syntax(archive: Archive) -> None:
    names = ("JPEG2000.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "JPEG-LL.dcm")
    for name in names:
        assert archive.ingest(pydicom_file(name)).outcome is Outcome.STORED
    with archive.sessions() as session:
        syntaxes = set(session.scalars(select(Instance.transfer_syntax_uid)))
    assert syntaxes == {
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.70",
    }


def test_same_instance_twice_is_an_idempotent_success(archive: Archive) -> None:
    assert archive.ingest(CT_SLICES[0]).outcome is Outcome.STORED
    assert archive.ingest(CT_SLICES[0]).outcome is Outcome.DUPLICATE
    assert count(archive, Instance) == 1
    with archive.sessions() as session:
        assert session.scalars(select(Study)).one().number_of_instances == 1


@pytest.mark.parametrize("loss", ["gone", "cut short"])
def test_an_indexed_instance_whose_file_is_gone_is_stored_again(
    archive: Archive, loss: str
) -> None:
    archive.ingest(CT_SLICES[0])
    with archive.sessions() as session:
        key = session.scalars(select(Instance.blob_key)).one()
    lost = archive.blobs.local_path(key)
    assert lost is not None
    if loss == "gone":
        lost.unlink()  # as after a power cut that lost the file's new name
    else:
        os.truncate(lost, 0)  # a power cut before its bytes reached the disk
    assert not check(archive).consistent
    assert archive.ingest(CT_SLICES[0]).ok  # the sender's retry
    assert lost.read_bytes() == CT_SLICES[0].read_bytes()
    assert count(archive, Instance) == 1
    assert check(archive).consistent


def _altered_copy(source: Path, tmp_path: Path) -> Path:
    ds = dcmread(source)
    ds.StudyDescription = "changed on the console"
    altered = tmp_path / "altered.dcm"
    ds.save_as(altered, enforce_file_format=True)
    return altered


def test_same_uid_other_content_keeps_the_first_by_default(
    archive: Archive, tmp_path: Path
) -> None:
    archive.ingest(CT_SLICES[0])
    result = archive.ingest(_altered_copy(CT_SLICES[0], tmp_path))
    assert result.outcome is Outcome.KEPT_EXISTING and result.ok
    with archive.sessions() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.sha256 == hashlib.sha256(CT_SLICES[0].read_bytes()).hexdigest()


def test_replace_policy_stores_the_new_copy(archive: Archive, tmp_path: Path) -> None:
    archive.policy = DuplicatePolicy.REPLACE
    archive.ingest(CT_SLICES[0])
    altered = _altered_copy(CT_SLICES[0], tmp_path)
    assert archive.ingest(altered).outcome is Outcome.REPLACED
    with archive.sessions() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.sha256 == hashlib.sha256(altered.read_bytes()).hexdigest()
        assert session.scalars(select(Study)).one().study_description == "changed on the console"
        assert session.scalars(select(Study)).one().number_of_instances == 1


def test_reject_policy_answers_a_conflict(archive: Archive, tmp_path: Path) -> None:
    archive.policy = DuplicatePolicy.REJECT
    archive.ingest(CT_SLICES[0])
    result = archive.ingest(_altered_copy(CT_SLICES[0], tmp_path))
    assert result.problem is Problem.CONFLICT
    assert count(archive, Instance) == 1


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _with_uid(tmp_path: Path, keyword: str, value: str | None) -> Path:
    ds = dcmread(CT_SLICES[0])
    if value is None:
        del ds[keyword]
    else:
        setattr(ds, keyword, value)
    path = tmp_path / f"{keyword}.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda t: _write(t, "text.dcm", b"this is not DICOM" * 100), "not a readable DICOM"),
        (lambda t: _write(t, "empty.dcm", b""), "not a readable DICOM"),
        (lambda t: _write(t, "cut.dcm", CT_SLICES[0].read_bytes()[:-5000]), "truncated"),
        (lambda t: _write(t, "head.dcm", CT_SLICES[0].read_bytes()[:600]), ""),
        (lambda t: pydicom_file("MR_truncated.dcm"), "truncated"),
        (lambda t: _with_uid(t, "StudyInstanceUID", None), "missing StudyInstanceUID"),
        (lambda t: _with_uid(t, "SeriesInstanceUID", "1.2.abc"), "malformed SeriesInstanceUID"),
        (lambda t: _with_uid(t, "StudyInstanceUID", "1." + "2" * 70), "malformed"),
        (lambda t: _with_uid(t, "StudyInstanceUID", "1..2"), "malformed"),
        (lambda t: _with_uid(t, "StudyInstanceUID", "1.2'; DROP TABLE studies;--"), "malformed"),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(
    archive: Archive, tmp_path: Path, make: object, reason: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = archive.ingest(path)
    assert result.outcome is Outcome.REJECTED
    assert result.problem in (Problem.INVALID, Problem.MISMATCH)
    assert reason in result.reason and result.reason
    assert count(archive, Instance) == count(archive, Study) == count(archive, Patient) == 0
    assert not list(archive.blobs.iter_keys())
    assert not staged_files(archive)
    assert path.exists()  # an import never consumes its source


def test_announced_uid_must_match_the_dataset(archive: Archive) -> None:
    result = archive.ingest(CT_SLICES[0], Source(sop_instance_uid="1.2.3.4"))
    assert result.problem is Problem.MISMATCH


def test_patient_identity_is_scoped_by_issuer(archive: Archive, tmp_path: Path) -> None:
    ds = dcmread(pydicom_file("CT_small.dcm"))
    ds.pop("IssuerOfPatientID", None)
    first, second = tmp_path / "a.dcm", tmp_path / "b.dcm"
    ds.save_as(first)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = ds.StudyInstanceUID + ".2"
    ds.save_as(second)
    archive.ingest(first, Source(site="HOSPITAL-A"))
    archive.ingest(second, Source(site="HOSPITAL-B"))
    with archive.sessions() as session:
        issuers = sorted(session.scalars(select(Patient.issuer)))
    assert issuers == ["HOSPITAL-A", "HOSPITAL-B"]


def test_check_finds_missing_changed_and_unindexed_files(archive: Archive) -> None:
    for path in CT_SLICES[:3]:
        archive.ingest(path)
    assert check(archive).consistent
    with archive.sessions() as session:
        keys = list(session.scalars(select(Instance.blob_key).order_by(Instance.id)))
    paths = [archive.blobs.local_path(key) for key in keys]
    assert all(paths)
    paths[0].unlink()  # type: ignore[union-attr]
    paths[1].write_bytes(paths[1].read_bytes()[:-1] + b"\x01")  # type: ignore[union-attr]
    with archive.sessions() as session:
        session.delete(session.scalars(select(Instance).where(Instance.blob_key == keys[2])).one())
        session.commit()
    report = check(archive)
    assert len(report.missing) == 1 and len(report.corrupt) == 1
    assert report.unindexed == [keys[2]]


def test_rebuild_derives_the_index_from_the_files(archive: Archive) -> None:
    for path in [*CT_SLICES[:5], pydicom_file("MR_small.dcm")]:
        archive.ingest(path)
    with archive.sessions() as session:
        before = sorted(session.scalars(select(Instance.sop_instance_uid)))
    indexed, unreadable = rebuild(archive)
    assert (indexed, unreadable) == (6, [])
    with archive.sessions() as session:
        assert sorted(session.scalars(select(Instance.sop_instance_uid))) == before
        assert session.scalar(select(func.sum(Study.number_of_instances))) == 6
        assert count(archive, Series) == 2
    assert check(archive).consistent


def test_a_crash_between_blob_and_index_is_recovered(archive: Archive) -> None:
    """The state kill -9 leaves between the fsynced rename and the index commit."""
    archive.ingest(CT_SLICES[0])
    with archive.sessions() as session:
        instance = session.scalars(select(Instance)).one()
        key = instance.blob_key
    with archive.sessions() as session:  # as if the index commit never happened
        remove_instance(session, session.get_one(Instance, instance.id))
        session.commit()
    archive.blobs.mark_pending(key)
    assert check(archive).unindexed == [key]
    assert archive.recover_pending() == 1
    assert check(archive).consistent
    assert archive.blobs.pending_keys() == []
    assert archive.recover_pending() == 0


def test_no_pending_marker_outlives_an_ingest(archive: Archive, tmp_path: Path) -> None:
    archive.ingest(CT_SLICES[0])
    archive.ingest(_altered_copy(CT_SLICES[0], tmp_path))
    archive.ingest(_write(tmp_path, "junk.dcm", b"junk"))
    assert archive.blobs.pending_keys() == []


def test_ids_cached_by_a_writer_survive_a_rebuild_elsewhere(archive: Archive) -> None:
    """Another process rebuilding the index renumbers rows under a running writer."""
    archive.ingest(CT_SLICES[0])  # the writer now caches the CT series' row ids
    other_process = Archive(archive.blobs, archive.sessions)
    with archive.sessions() as session:
        for model in (Instance, Series, Study, Patient):
            session.execute(delete(model))
        session.commit()
    other_process.ingest(pydicom_file("MR_small.dcm"))  # takes the CT series' old id
    other_process.ingest(CT_SLICES[0])
    assert archive.ingest(CT_SLICES[1]).outcome is Outcome.STORED
    with archive.sessions() as session:
        ct = session.scalars(select(Series).where(Series.modality == "CT")).one()
        mr = session.scalars(select(Series).where(Series.modality == "MR")).one()
        assert (ct.number_of_instances, mr.number_of_instances) == (2, 1)
        assert session.scalar(select(func.sum(Study.number_of_instances))) == 3
    assert check(archive).consistent
