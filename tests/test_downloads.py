"""Study and series downloads: a streamed ZIP holding a DICOM File-set with its DICOMDIR."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.fileset import FileSet

from api.app import create_app
from api.zip_stream import CHUNK, Member, zip_stream
from pacs.dicomdir import plan_file_set
from pacs.documents import DocumentInfo, archive_pdf
from storage import Archive
from storage.export import export_instances
from storage.retrieve import find_instances
from storage.users import Role, create_user
from tests.conftest import SAMPLES, require_tool, run

DOCTOR = ("doctor", "doctor-password")
REFERRING = ("referrer", "referrer-password")
MODALITY = ("ct-console", "modality-password")


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with archive.sessions() as session:
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        create_user(
            session, "referrer", "referrer-password", Role.REFERRING, referring_name="Lê^Thị Mai"
        )
        create_user(session, "ct-console", "modality-password", Role.MODALITY)
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def ingest(archive: Archive, folder: str) -> dict[str, Path]:
    """SOP Instance UID -> the sample file ingested."""
    files = {}
    for path in sorted((SAMPLES / folder).rglob("*.dcm")):
        assert archive.ingest(path).ok
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return files


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unpack(body: bytes, folder: Path) -> zipfile.ZipFile:
    """Extract into ``folder`` (created; apart from the archive fixture's own files)."""
    folder.mkdir()
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None  # every member's CRC checks out
    archive.extractall(folder)
    return archive


def test_a_study_downloads_as_a_file_set(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    dcmdump = require_tool("dcmdump")
    files = ingest(archive, "ct_chest")
    study = str(dcmread(next(iter(files.values())), stop_before_pixels=True).StudyInstanceUID)
    pdf = b"%PDF-1.4\n% a report\n%%EOF\n"
    info = DocumentInfo("Radiology report v1", 1, datetime(2026, 11, 24, tzinfo=UTC))
    document = archive_pdf(archive, study, pdf, info)

    response = client.get(f"/api/studies/{study}/download", auth=REFERRING)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="{study}.zip"' in response.headers["content-disposition"]
    assert "content-length" not in response.headers  # streamed, not built first
    export = tmp_path / "export"
    unpacked = unpack(response.content, export)
    # Last, so the files stream from the first byte; readers find it by name.
    assert unpacked.namelist()[-1] == "DICOMDIR"
    assert all(i.compress_type == zipfile.ZIP_STORED for i in unpacked.infolist())

    file_set = FileSet(export / "DICOMDIR")
    assert len(file_set) == 25
    found = {instance.SOPInstanceUID: Path(instance.path) for instance in file_set}
    assert set(found) == set(files) | {document}
    for uid, original in files.items():  # byte for byte as stored
        assert digest(found[uid].read_bytes()) == digest(original.read_bytes())
    patient = file_set.find(PatientID="BN0001")
    assert len(patient) == 25
    assert str(patient[0].PatientName) == "Nguyễn^Văn An"
    encapsulated = file_set.find(SOPInstanceUID=document)[0]
    assert encapsulated.DirectoryRecordType == "ENCAP DOC"
    assert dcmread(encapsulated.path).Modality == "DOC"

    scanned = run([dcmdump, "+sd", "+r", str(export)])
    assert scanned.returncode == 0, scanned.stderr
    assert scanned.stdout.count("# Dicom-File-Format") == 26  # DICOMDIR + 25 files
    dicomdir = run([dcmdump, "-dc", str(export / "DICOMDIR")])
    assert dicomdir.returncode == 0, dicomdir.stderr
    assert "E:" not in dicomdir.stderr, dicomdir.stderr
    assert dicomdir.stdout.count("[IMAGE ]") == 24
    assert dicomdir.stdout.count("[ENCAP DOC ]") == 1


def test_a_series_downloads_alone(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    ct = ingest(archive, "ct_chest")
    ingest(archive, "xa_coronary")
    first = dcmread(next(iter(ct.values())), stop_before_pixels=True)
    response = client.get(
        f"/api/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/download",
        auth=DOCTOR,
    )
    assert response.status_code == 200, response.text
    unpack(response.content, tmp_path / "export")
    file_set = FileSet(tmp_path / "export" / "DICOMDIR")
    assert {i.SOPInstanceUID for i in file_set} == set(ct)
    assert {i.SeriesInstanceUID for i in file_set} == {first.SeriesInstanceUID}


def test_the_dicomdir_is_what_pydicom_would_write(archive: Archive) -> None:
    """Records made without pydicom datasets (IMAGE) and the offsets between records
    (PS3.3 F.3.2.2) come out as pydicom encodes and reads them."""
    files = ingest(archive, "ct_chest")
    study = str(dcmread(next(iter(files.values())), stop_before_pixels=True).StudyInstanceUID)
    with archive.sessions() as session:
        instances = export_instances(session, study)
    plan, paths = plan_file_set(instances, lambda stored: archive.blobs.open(stored.blob_key))
    assert len(set(paths.values())) == len(files)
    dicomdir = plan.dicomdir()
    assert dicomdir == plan.dicomdir()  # deterministic, UID included

    ds = dcmread(io.BytesIO(dicomdir))
    again = io.BytesIO()
    ds.save_as(again, enforce_file_format=True)
    assert again.getvalue() == dicomdir
    records = {r.seq_item_tell: r for r in ds.DirectoryRecordSequence}
    assert ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity in records
    for record in records.values():
        for offset in (
            record.OffsetOfTheNextDirectoryRecord,
            record.OffsetOfReferencedLowerLevelDirectoryEntity,
        ):
            assert offset == 0 or offset in records
    images = [r for r in records.values() if r.DirectoryRecordType == "IMAGE"]
    assert {r.ReferencedSOPInstanceUIDInFile: "/".join(r.ReferencedFileID) for r in images} == paths


def test_downloads_refuse_bad_requests(client: TestClient, archive: Archive) -> None:
    files = ingest(archive, "mr_brain")
    ds = dcmread(next(iter(files.values())), stop_before_pixels=True)
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    assert client.get(f"/api/studies/{study}/download").status_code == 401
    assert client.get(f"/api/studies/{study}/download", auth=MODALITY).status_code == 403
    assert client.get("/api/studies/1.2.3.4/download", auth=DOCTOR).status_code == 404
    assert client.get("/api/studies/abc/download", auth=DOCTOR).status_code == 400
    other_series = client.get(f"/api/studies/{study}/series/1.2.3/download", auth=DOCTOR)
    assert other_series.status_code == 404
    wrong_study = client.get(f"/api/studies/1.2.3/series/{series}/download", auth=DOCTOR)
    assert wrong_study.status_code == 404


def test_a_missing_file_is_an_error_before_any_byte(client: TestClient, archive: Archive) -> None:
    files = ingest(archive, "mr_brain")
    ds = dcmread(next(iter(files.values())), stop_before_pixels=True)
    with archive.sessions() as session:
        victim = find_instances(session, ds.StudyInstanceUID)[5]
    archive.blobs.delete(victim.blob_key)
    response = client.get(f"/api/studies/{ds.StudyInstanceUID}/download", auth=DOCTOR)
    assert response.status_code == 500
    assert "pacs check" in response.json()["detail"]


def test_the_zip_is_written_a_chunk_at_a_time() -> None:
    big = bytes(range(256)) * (5 * CHUNK // 256)
    members = [
        Member("a.bin", len(big), lambda: io.BytesIO(big)),
        Member("dir/b.bin", 3, lambda: io.BytesIO(b"abc")),
    ]
    chunks = list(zip_stream(members))
    assert max(len(c) for c in chunks) <= CHUNK + 1024  # never the whole file at once
    assert len(chunks) >= 5
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.read("a.bin") == big
    assert archive.read("dir/b.bin") == b"abc"
