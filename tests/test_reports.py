"""Reports: the storage rules, the HTTP life of a report, and its archived DICOM document."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import func, select

from api.app import create_app
from pacs.documents import (
    ENCAPSULATED_PDF,
    DocumentInfo,
    archive_pdf,
    document_pdf,
    encapsulated_pdf,
)
from storage import Archive, Source
from storage.models import AuditEvent, Patient, Report
from storage.reports import (
    ReportConflict,
    ReportContent,
    ReportInvalid,
    ReportNotFound,
    ReportStatus,
    amend,
    create_draft,
    edit_draft,
    finalize,
    patient_reports,
    study_reports,
)
from storage.retrieve import find_instances
from storage.users import Role, create_user
from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server, pdftotext, require_tool, run

ADMIN = ("admin", "admin-password")
DOCTOR = ("doctor", "doctor-password")
REFERRING = ("referrer", "referrer-password")
SIGNER = "BS. Nguyễn Văn Bình"


def ingest_study(archive: Archive, folder: str) -> str:
    files = sorted((SAMPLES / folder).rglob("*.dcm"))
    for path in files:
        assert archive.ingest(path).ok
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def instance_uids(archive: Archive, study: str) -> list[str]:
    with archive.sessions() as session:
        return [s.sop_instance_uid for s in find_instances(session, study)]


@pytest.fixture
def ct(archive: Archive) -> str:
    return ingest_study(archive, "ct_chest")


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        create_user(
            session, "referrer", "referrer-password", Role.REFERRING, referring_name="Lê^Thị Mai"
        )
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        yield test_client


# --- storage -----------------------------------------------------------------------


def test_a_report_lives_draft_final_amended(archive: Archive, ct: str) -> None:
    content = ReportContent(template="ct-chest", fields={"lungs": "Bình thường"}, findings="x")
    with archive.sessions() as session:
        draft = create_draft(session, ct, content, "doctor")
        assert (draft.status, draft.version, draft.previous_id) == (ReportStatus.DRAFT, 1, None)
        edited = edit_draft(session, draft.id, {"impression": "Không có tổn thương"})
        assert edited.content.impression == "Không có tổn thương"
        assert edited.content.fields == {"lungs": "Bình thường"}
        signed_at = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
        final = finalize(session, draft.id, SIGNER, signed_at, "1.2.3")
        assert final.status is ReportStatus.FINAL
        assert (final.finalized_by, final.finalized_at) == (SIGNER, signed_at)
        with pytest.raises(ReportConflict):
            edit_draft(session, draft.id, {"findings": "changed"})
        with pytest.raises(ReportConflict):
            finalize(session, draft.id, "Someone else", signed_at)
        second = amend(session, draft.id, "doctor")
        assert (second.version, second.previous_id, second.status) == (2, draft.id, "draft")
        assert second.content == final.content  # the correction starts from what was signed
        with pytest.raises(ReportConflict):
            amend(session, draft.id, "doctor")  # one amendment per final
        with pytest.raises(ReportConflict):
            amend(session, second.id, "doctor")  # a draft is edited, not amended
        finalize(session, second.id, SIGNER, signed_at)
        session.commit()
        versions = study_reports(session, ct)
        assert [(r.version, r.status) for r in versions] == [(1, "amended"), (2, "final")]
        assert versions[0].content.findings == "x"  # the superseded text is kept
        assert versions[0].finalized_by == SIGNER
        by_patient = patient_reports(session, "BN0001", "BV-TINH-HAGIANG")
        assert [r.id for r in by_patient] == [r.id for r in versions]
        assert patient_reports(session, "BN0001", "OTHER-HOSPITAL") == []
        signed = study_reports(session, ct, (ReportStatus.FINAL,))
        assert [r.version for r in signed] == [2]


def test_bad_reports_change_nothing(archive: Archive, ct: str) -> None:
    other = ingest_study(archive, "mr_brain")
    foreign_image = instance_uids(archive, other)[0]
    own_image = instance_uids(archive, ct)[3]
    with archive.sessions() as session:
        with pytest.raises(ReportNotFound):
            create_draft(session, "1.2.3.4.5", ReportContent(), "doctor")
        with pytest.raises(ReportNotFound):
            create_draft(session, "not a uid' OR 1=1", ReportContent(), "doctor")
        for bad in (
            ReportContent(template="ct-foot"),
            ReportContent(template="ct-head", fields={"lungs": "wrong template"}),
            ReportContent(findings="x" * 20_001),
            ReportContent(key_images=(foreign_image,)),
            ReportContent(key_images=("1.2.3",)),
            ReportContent(key_images=(own_image, own_image)),
        ):
            with pytest.raises(ReportInvalid):
                create_draft(session, ct, bad, "doctor")
        draft = create_draft(session, ct, ReportContent(key_images=(own_image,)), "doctor")
        with pytest.raises(ReportInvalid):
            edit_draft(session, draft.id, {"fields": {"nodules": "none"}})  # template none
        with pytest.raises(ReportInvalid):
            edit_draft(session, draft.id, {"author": "someone else"})
        with pytest.raises(ReportNotFound):
            edit_draft(session, 999_999, {"findings": "x"})
        session.commit()
        assert session.scalar(select(func.count(Report.id))) == 1


# --- HTTP ----------------------------------------------------------------------------


def test_the_life_of_a_report_over_http(client: TestClient, archive: Archive, ct: str) -> None:
    key_image = instance_uids(archive, ct)[12]
    created = client.post(
        f"/api/studies/{ct}/reports",
        json={"template": "ct-chest", "findings": "Phổi hai bên sáng.", "key_images": [key_image]},
        auth=DOCTOR,
    )
    assert created.status_code == 201, created.text
    report = created.json()
    rid = report["id"]
    assert (report["status"], report["version"], report["author"]) == ("draft", 1, "doctor")

    edited = client.patch(
        f"/api/reports/{rid}",
        json={"impression": "Bình thường.", "fields": {"nodules": "Không có"}},
        auth=DOCTOR,
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["findings"] == "Phổi hai bên sáng."
    assert edited.json()["fields"] == {"nodules": "Không có"}

    # A referring doctor sees no draft, and writes nothing.
    assert client.get(f"/api/reports/{rid}", auth=REFERRING).status_code == 404
    assert client.get(f"/api/reports/{rid}/pdf", auth=REFERRING).status_code == 404
    assert client.get(f"/api/studies/{ct}/reports", auth=REFERRING).json() == []
    assert client.post(f"/api/reports/{rid}/finalize", auth=REFERRING).status_code == 403
    assert client.patch(f"/api/reports/{rid}", json={}, auth=REFERRING).status_code == 403
    assert client.post(f"/api/studies/{ct}/reports", json={}, auth=REFERRING).status_code == 403

    key = client.get(f"/api/reports/{rid}/key-images/1", auth=DOCTOR)
    assert key.status_code == 200
    assert key.headers["content-type"] == "image/jpeg"
    assert client.get(f"/api/reports/{rid}/key-images/2", auth=DOCTOR).status_code == 404
    assert client.get(f"/api/reports/{rid}/key-images/1", auth=REFERRING).status_code == 404

    draft_pdf = client.get(f"/api/reports/{rid}/pdf", auth=DOCTOR)
    assert draft_pdf.status_code == 200
    assert draft_pdf.headers["content-type"] == "application/pdf"
    assert draft_pdf.content.startswith(b"%PDF-")

    signed = client.post(f"/api/reports/{rid}/finalize", json={"signer": SIGNER}, auth=DOCTOR)
    assert signed.status_code == 200, signed.text
    final = signed.json()
    assert (final["status"], final["finalized_by"]) == ("final", SIGNER)
    assert final["finalized_at"] and final["document_uid"]

    # Final is final: no edit, no second signature, and nothing changed.
    again = client.post(f"/api/reports/{rid}/finalize", json={"signer": "X"}, auth=DOCTOR)
    assert again.status_code == 409
    assert "already final" in again.json()["detail"]
    changed = client.patch(f"/api/reports/{rid}", json={"findings": "rewritten"}, auth=ADMIN)
    assert changed.status_code == 409
    assert client.get(f"/api/reports/{rid}", auth=DOCTOR).json() == final
    assert len(instance_uids(archive, ct)) == 25  # 24 slices + one report document

    # The referring doctor reads it now, as a list and as the PDF.
    listed = client.get(f"/api/studies/{ct}/reports", auth=REFERRING).json()
    assert [r["id"] for r in listed] == [rid]
    by_patient = client.get(
        "/api/patients/BN0001/reports", params={"issuer": "BV-TINH-HAGIANG"}, auth=REFERRING
    )
    assert [r["id"] for r in by_patient.json()] == [rid]
    assert client.get("/api/patients/BN0001/reports", auth=REFERRING).json() == []  # no issuer
    downloaded = client.get(f"/api/reports/{rid}/pdf", auth=REFERRING)
    assert downloaded.status_code == 200
    assert "attachment" in downloaded.headers["content-disposition"]

    # Amend: a new draft version; the final stays until the amendment is signed.
    amended = client.post(f"/api/reports/{rid}/amend", auth=DOCTOR)
    assert amended.status_code == 201, amended.text
    v2 = amended.json()
    assert (v2["version"], v2["previous_id"], v2["status"]) == (2, rid, "draft")
    assert client.post(f"/api/reports/{rid}/amend", auth=DOCTOR).status_code == 409
    assert client.post(f"/api/reports/{v2['id']}/amend", auth=DOCTOR).status_code == 409
    client.patch(f"/api/reports/{v2['id']}", json={"impression": "Nốt mờ 3 mm."}, auth=DOCTOR)
    assert client.post(f"/api/reports/{v2['id']}/finalize", auth=ADMIN).status_code == 200
    versions = client.get(f"/api/studies/{ct}/reports", auth=REFERRING).json()
    assert [(r["version"], r["status"]) for r in versions] == [(1, "amended"), (2, "final")]
    assert versions[1]["finalized_by"] == "admin"  # no signer given: the username
    assert versions[0]["impression"] == "Bình thường."

    # Every change and read was audited, with the study it concerns.
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.sessions() as session:
        events = session.execute(
            select(AuditEvent.action, AuditEvent.study_instance_uid, AuditEvent.status)
        ).all()
    actions = {(action, status) for action, study, status in events if study == ct}
    for expected in (
        ("report-create", 201),
        ("report-edit", 200),
        ("report-finalize", 200),
        ("report-finalize", 409),
        ("report-amend", 201),
        ("report-pdf", 200),
        ("report-read", 200),
        ("report-list", 200),
    ):
        assert expected in actions


def test_bad_requests_get_clear_errors(client: TestClient, archive: Archive, ct: str) -> None:
    unknown = client.post("/api/studies/1.2.3.4/reports", json={}, auth=DOCTOR)
    assert unknown.status_code == 404
    assert "no study" in unknown.json()["detail"]
    for body in (
        {"findings": "x" * 20_001},
        {"template": "ct-foot"},
        {"template": "ct-head", "fields": {"lungs": "no such field"}},
        {"fields": {"lungs": 3}},
        {"key_images": ["1.2.3"]},
        {"author": "forged"},
    ):
        response = client.post(f"/api/studies/{ct}/reports", json=body, auth=DOCTOR)
        assert response.status_code == 422, body
    assert client.get(f"/api/studies/{ct}/reports", auth=ADMIN).json() == []
    assert client.get("/api/reports/424242", auth=ADMIN).status_code == 404
    assert client.post("/api/reports/424242/finalize", auth=ADMIN).status_code == 404
    assert client.get("/api/studies/1.2.3.4/reports", auth=ADMIN).status_code == 404
    rid = client.post(f"/api/studies/{ct}/reports", json={}, auth=DOCTOR).json()["id"]
    for patch in ({"findings": None}, {"impression": "y" * 20_001}, {"status": "final"}):
        assert client.patch(f"/api/reports/{rid}", json=patch, auth=DOCTOR).status_code == 422
    too_long = client.post(f"/api/reports/{rid}/finalize", json={"signer": "n" * 129}, auth=ADMIN)
    assert too_long.status_code == 422
    assert client.get(f"/api/reports/{rid}", auth=ADMIN).json()["status"] == "draft"
    assert len(instance_uids(archive, ct)) == 24


# --- the archived document ----------------------------------------------------------------


def test_the_signed_report_is_an_encapsulated_pdf_in_the_study(
    client: TestClient, archive: Archive, ct: str
) -> None:
    dcmdump = require_tool("dcmdump")
    rid = client.post(f"/api/studies/{ct}/reports", json={"findings": "ok"}, auth=DOCTOR).json()[
        "id"
    ]
    final = client.post(f"/api/reports/{rid}/finalize", json={"signer": SIGNER}, auth=DOCTOR)
    document = final.json()["document_uid"]
    with archive.sessions() as session:
        stored = find_instances(session, ct, None, document)[0]
        images = find_instances(session, ct)
    path = archive.blobs.local_path(stored.blob_key)
    assert path is not None
    dumped = run([dcmdump, "-dc", str(path)])
    assert dumped.returncode == 0, dumped.stderr
    assert "E:" not in dumped.stderr and "W:" not in dumped.stderr, dumped.stderr
    assert "EncapsulatedPDFStorage" in dumped.stdout

    ds = dcmread(path)
    image = dcmread(archive.blobs.local_path(images[0].blob_key), stop_before_pixels=True)  # type: ignore[arg-type]
    assert ds.SOPClassUID == ENCAPSULATED_PDF
    assert ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.BurnedInAnnotation == "YES"
    assert ds.SeriesInstanceUID != image.SeriesInstanceUID
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
    ):
        assert ds[keyword].value == image[keyword].value, keyword
    assert str(ds.PatientName) == "Nguyễn^Văn An"

    # Over WADO-RS, the document's PDF is the very PDF the report download gives.
    retrieved = client.get(
        f"/dicomweb/studies/{ct}/series/{ds.SeriesInstanceUID}/instances/{document}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
        auth=REFERRING,
    )
    assert retrieved.status_code == 200, retrieved.text
    over_wado = dcmread(io.BytesIO(retrieved.content))
    pdf_bytes = client.get(f"/api/reports/{rid}/pdf", auth=REFERRING).content
    length = int(over_wado.EncapsulatedDocumentLength)
    assert length == len(pdf_bytes)
    assert len(over_wado.EncapsulatedDocument) == length + length % 2
    assert bytes(over_wado.EncapsulatedDocument)[:length] == pdf_bytes

    # QIDO-RS lists it as a DOC series of the study.
    series = client.get(
        f"/dicomweb/studies/{ct}/series", params={"Modality": "DOC"}, auth=REFERRING
    ).json()
    assert [s["0020000E"]["Value"][0] for s in series] == [ds.SeriesInstanceUID]


def test_a_latin1_study_gets_a_utf8_document(archive: Archive, tmp_path: Path) -> None:
    study = ingest_study(archive, "ct_latin1")
    source = dcmread(next((SAMPLES / "ct_latin1").rglob("*.dcm")), stop_before_pixels=True)
    assert source.SpecificCharacterSet == "ISO_IR 100"
    info = DocumentInfo("Radiology report v1", 1, datetime(2026, 11, 24, tzinfo=UTC))
    pdf = b"%PDF-1.4 odd length"
    ds = encapsulated_pdf(pdf, source, info)
    path = tmp_path / "doc.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Müller^Jürgen"
    assert back.StudyInstanceUID == study
    assert "Müller".encode() in path.read_bytes()  # UTF-8 on disk, not Latin-1
    assert len(back.EncapsulatedDocument) == len(pdf) + 1  # padded to even length
    assert document_pdf(back) == pdf
    with pytest.raises(ValueError):
        encapsulated_pdf(b"not a pdf", source, info)


def test_the_worklist_shows_the_report_status(
    client: TestClient, archive: Archive, ct: str
) -> None:
    mr = ingest_study(archive, "mr_brain")

    def statuses() -> dict[str, str | None]:
        page = client.get("/api/worklist", auth=DOCTOR).json()
        return {item["study_instance_uid"]: item["report"] for item in page["items"]}

    assert statuses() == {ct: None, mr: None}
    rid = client.post(f"/api/studies/{ct}/reports", json={}, auth=DOCTOR).json()["id"]
    assert statuses() == {ct: "draft", mr: None}
    client.post(f"/api/reports/{rid}/finalize", auth=DOCTOR)
    assert statuses() == {ct: "final", mr: None}
    client.post(f"/api/reports/{rid}/amend", auth=DOCTOR)
    assert statuses()[ct] == "draft"  # the amendment being written


def pdf_text(response: httpx.Response, tmp_path: Path) -> str:
    assert response.status_code == 200, response.text
    path = tmp_path / "report.pdf"
    path.write_bytes(response.content)
    return pdftotext(path)


def test_each_pdf_says_the_status_the_report_has_now(
    client: TestClient, ct: str, tmp_path: Path
) -> None:
    rid = client.post(f"/api/studies/{ct}/reports", json={"findings": "v1"}, auth=DOCTOR).json()[
        "id"
    ]
    client.post(f"/api/reports/{rid}/finalize", json={"signer": SIGNER}, auth=DOCTOR)
    v1_signed = client.get(f"/api/reports/{rid}/pdf", auth=DOCTOR)
    assert "Status: FINAL - signed" in pdf_text(v1_signed, tmp_path)
    v2 = client.post(f"/api/reports/{rid}/amend", auth=DOCTOR).json()["id"]
    client.patch(f"/api/reports/{v2}", json={"findings": "v2"}, auth=DOCTOR)
    assert "Status: DRAFT" in pdf_text(client.get(f"/api/reports/{v2}/pdf", auth=DOCTOR), tmp_path)
    # Until the amendment is signed, version 1 is still the final report, as archived.
    again = client.get(f"/api/reports/{rid}/pdf", auth=DOCTOR)
    assert again.content == v1_signed.content
    client.post(f"/api/reports/{v2}/finalize", json={"signer": SIGNER}, auth=DOCTOR)

    link = client.post(f"/api/studies/{ct}/share-links", json={}, auth=DOCTOR).json()["url"]
    for superseded in (
        client.get(f"/api/reports/{rid}/pdf", auth=DOCTOR),
        client.get(f"{link}/reports/{rid}/pdf"),
    ):
        text = pdf_text(superseded, tmp_path)
        assert "Status: AMENDED - replaced by version 2 of this report" in text
        assert "FINAL" not in text
        assert SIGNER in text  # it was signed, and says by whom
        assert "v1" in text
    for current in (
        client.get(f"/api/reports/{v2}/pdf", auth=DOCTOR),
        client.get(f"{link}/reports/{v2}/pdf"),
    ):
        text = pdf_text(current, tmp_path)
        assert "Status: FINAL - signed, amends version 1" in text
        assert "AMENDED" not in text and "v2" in text


def test_the_templates_are_listed_with_their_fields(client: TestClient) -> None:
    listed = client.get("/api/report-templates", auth=REFERRING).json()
    assert listed["none"] == []
    assert listed["ct-chest"][0] == {"key": "lungs", "label": "Lungs"}
    assert set(listed) == {"none", "ct-head", "ct-chest", "mr-brain", "xa-coronary"}
    assert client.get("/api/report-templates").status_code == 401


def test_the_report_document_travels_over_dicom(server: Server, tmp_path: Path) -> None:
    """A live ``pacs serve``: the signed report is found by DCMTK findscu (C-FIND) and
    fetched by getscu (C-GET) as an Encapsulated PDF holding the downloadable PDF."""
    files = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    port = str(server.dicom_port)
    sent = run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1", port, *map(str, files)])
    assert sent.returncode == 0, sent.stderr
    admin = ("admin", ADMIN_PASSWORD)
    with httpx.Client(base_url=server.base_url, auth=admin, timeout=30) as http:
        rid = http.post(f"/api/studies/{study}/reports", json={"findings": "ok"}).json()["id"]
        final = http.post(f"/api/reports/{rid}/finalize", json={"signer": SIGNER}).json()
        pdf = http.get(f"/api/reports/{rid}/pdf").content
    found = run([require_tool("findscu"), "-S", "-aec", "PACS",
                 "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
                 "-k", "Modality=DOC", "-k", "SeriesInstanceUID",
                 "127.0.0.1", port])  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert (found.stdout + found.stderr).count("(0008,0060) CS [DOC ]") == 1
    out = tmp_path / "got"
    out.mkdir()
    got = run([require_tool("getscu"), "-S", "-aec", "PACS", "-od", str(out),
               "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
               "-k", f"SOPInstanceUID={final['document_uid']}",
               "127.0.0.1", port])  # fmt: skip
    assert got.returncode == 0, got.stderr
    [received] = list(out.iterdir())
    document = dcmread(received)
    assert document.SOPClassUID == ENCAPSULATED_PDF
    assert document_pdf(document) == pdf


def test_the_document_files_under_the_patient_of_a_study_without_issuer(
    archive: Archive, tmp_path: Path
) -> None:
    """Without IssuerOfPatientID the sending node's site is the issuer (SPEC): the
    report document must land under that same patient, not a new issuer-less one."""
    for number, path in enumerate(sorted((SAMPLES / "mr_brain").rglob("*.dcm"))[:3]):
        ds = dcmread(path)
        del ds.IssuerOfPatientID
        copy = tmp_path / f"{number}.dcm"
        ds.save_as(copy)
        assert archive.ingest(copy, Source(ae_title="HG_MR", site="HA-GIANG")).ok
    study = str(ds.StudyInstanceUID)
    info = DocumentInfo("Radiology report v1", 1, datetime(2026, 11, 24, tzinfo=UTC))
    archive_pdf(archive, study, b"%PDF-1.4\n%%EOF\n", info)
    with archive.sessions() as session:
        patients = session.execute(select(Patient.issuer, Patient.patient_id)).all()
        assert patients == [("HA-GIANG", "BN0002")]
        assert len(find_instances(session, study)) == 4
