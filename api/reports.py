"""``/api/…/reports``: write, sign, amend, list and download radiology reports.

Admins and radiologists write; referring doctors read signed reports only (a draft
is not theirs to see: it answers 404 to them, as if it did not exist). The states
and their rules live in :mod:`storage.reports`; this module maps its errors to HTTP
(404 unknown, 409 wrong state, 422 bad content) and does what signing involves
beyond the index: the PDF (:mod:`viewer.report_pdf`) and its Encapsulated PDF
instance in the study (:mod:`pacs.documents`, PS3.3 A.45.1), archived before the
report is marked final, so a final report always has its document.

Every route is audited with the study it concerns (``request.state.audit_study``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.audit import audited
from api.auth import Principal, require_role
from api.params import RowId
from pacs.documents import DocumentError, DocumentInfo, archive_pdf, archived_pdf
from pacs.settings import Settings
from storage import Archive
from storage.report_templates import TEMPLATES, labelled
from storage.reports import (
    MAX_FIELD,
    MAX_KEY_IMAGES,
    MAX_SIGNER,
    MAX_TEXT,
    SIGNED,
    ReportConflict,
    ReportContent,
    ReportError,
    ReportNotFound,
    ReportStatus,
    ReportView,
    amend,
    check_draft,
    check_signer,
    create_draft,
    edit_draft,
    finalize,
    get_report,
    patient_reports,
    report_subject,
    study_reports,
)
from storage.retrieve import find_instances
from storage.users import Role
from viewer.render import RenderError, RenderParams, render
from viewer.report_pdf import Letterhead, ReportDocument, ReportPdfError, report_pdf

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["reports"])

Writer = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.RADIOLOGIST))]
Reader = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.RADIOLOGIST, Role.REFERRING))]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
FieldText = Annotated[str, Field(max_length=MAX_FIELD)]
Uid = Annotated[str, Field(max_length=64)]
KEY_IMAGE_SIZE = (640, 640)


class ReportBody(BaseModel):
    """A new draft's content; every part optional."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field("none", max_length=32, description=", ".join(TEMPLATES))
    fields: dict[Annotated[str, Field(max_length=64)], FieldText] = Field(default_factory=dict)
    findings: Text = ""
    impression: Text = ""
    free_text: Text = ""
    key_images: list[Uid] = Field(default_factory=list, max_length=MAX_KEY_IMAGES)


class ReportPatch(BaseModel):
    """Changes to a draft: attributes left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(None, max_length=32)
    fields: dict[Annotated[str, Field(max_length=64)], FieldText] | None = None
    findings: Text | None = None
    impression: Text | None = None
    free_text: Text | None = None
    key_images: list[Uid] | None = Field(None, max_length=MAX_KEY_IMAGES)


class FinalizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signer: str | None = Field(
        None, max_length=MAX_SIGNER, description="the name printed under the report"
    )


class TemplateField(BaseModel):
    key: str
    label: str


class ReportOut(BaseModel):
    id: int
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    version: int
    previous_id: int | None
    status: ReportStatus
    template: str
    fields: dict[str, str]
    findings: str
    impression: str
    free_text: str
    key_images: list[str]
    author: str
    finalized_by: str
    finalized_at: datetime | None
    document_uid: str
    created_at: datetime
    updated_at: datetime
    pdf_url: str


@router.post(
    "/studies/{study}/reports",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(audited("report-create"))],
)
def create(request: Request, study: str, body: ReportBody, principal: Writer) -> ReportOut:
    """A new draft report on the study."""
    content = ReportContent(**{**body.model_dump(), "key_images": tuple(body.key_images)})
    with _answering(), _archive(request).sessions() as session:
        report = create_draft(session, study, content, principal.username)
        session.commit()
    return _out(report)


@router.get("/studies/{study}/reports", dependencies=[Depends(audited("report-list"))])
def of_study(request: Request, study: str, principal: Reader) -> list[ReportOut]:
    """Every version of the study's reports, oldest first (signed ones only for referring)."""
    with _answering(), _archive(request).sessions() as session:
        reports = study_reports(session, study, _visible(principal))
    return [_out(report) for report in reports]


@router.get("/patients/{patient_id}/reports", dependencies=[Depends(audited("report-list"))])
def of_patient(
    request: Request,
    patient_id: str,
    principal: Reader,
    issuer: Annotated[str, Query(max_length=64, description="IssuerOfPatientID")] = "",
) -> list[ReportOut]:
    """Reports on all studies of the patient (issuer, PatientID), oldest first."""
    if len(patient_id) > 64:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a PatientID is 64 characters")
    with _archive(request).sessions() as session:
        reports = patient_reports(session, patient_id, issuer, _visible(principal), principal.scope)
    return [_out(report) for report in reports]


@router.get("/reports/{report_id}", dependencies=[Depends(audited("report-read"))])
def read(request: Request, report_id: RowId, principal: Reader) -> ReportOut:
    return _out(_readable(request, report_id, principal))


@router.patch("/reports/{report_id}", dependencies=[Depends(audited("report-edit"))])
def edit(request: Request, report_id: RowId, body: ReportPatch, principal: Writer) -> ReportOut:
    """Change a draft; 409 once it is final."""
    changes = body.model_dump(exclude_unset=True)
    if any(value is None for value in changes.values()):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "null is not a value here")
    with _answering(), _archive(request).sessions() as session:
        request.state.audit_study = get_report(
            session, report_id, principal.scope
        ).study_instance_uid
        report = edit_draft(session, report_id, changes)
        session.commit()
    return _out(report)


@router.post("/reports/{report_id}/finalize", dependencies=[Depends(audited("report-finalize"))])
def sign(
    request: Request, report_id: RowId, principal: Writer, body: FinalizeBody | None = None
) -> ReportOut:
    """Sign the draft: it becomes final and immutable, and its PDF is archived in the
    study as an Encapsulated PDF instance. 409 if it is not a draft."""
    archive = _archive(request)
    with _answering(), _signing(report_id):
        with archive.sessions() as session:
            request.state.audit_study = get_report(
                session, report_id, principal.scope
            ).study_instance_uid
            draft = check_draft(session, report_id)
            signer = check_signer((body.signer if body else None) or principal.username)
        at = datetime.now(UTC).replace(microsecond=0)
        pdf = _pdf(request, draft, status=ReportStatus.FINAL, signer=signer, at=at)
        info = DocumentInfo(
            title=f"Radiology report v{draft.version}", version=draft.version, signed_at=at
        )
        try:
            document = archive_pdf(archive, draft.study_instance_uid, pdf, info)
        except DocumentError as exc:
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
        with archive.sessions() as session:
            report = finalize(session, report_id, signer, at, document)
            session.commit()
    return _out(report)


@router.post(
    "/reports/{report_id}/amend",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(audited("report-amend"))],
)
def correct(request: Request, report_id: RowId, principal: Writer) -> ReportOut:
    """A new draft version of a final report, to correct it; 409 unless it is final."""
    with _answering(), _archive(request).sessions() as session:
        request.state.audit_study = get_report(
            session, report_id, principal.scope
        ).study_instance_uid
        report = amend(session, report_id, principal.username)
        session.commit()
    return _out(report)


@router.get("/reports/{report_id}/pdf", dependencies=[Depends(audited("report-pdf"))])
def pdf(request: Request, report_id: RowId, principal: Reader) -> Response:
    """The report as PDF, saying what it is now (see :func:`current_pdf`)."""
    report = _readable(request, report_id, principal)
    body = current_pdf(request, report)
    name = f"report-{report.id}-v{report.version}.pdf"
    return Response(
        body,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/reports/{report_id}/key-images/{number}",
    dependencies=[Depends(audited("report-key-image"))],
)
def key_image(request: Request, report_id: RowId, number: int, principal: Reader) -> Response:
    """Key image ``number`` (1-based, in the report's order) as JPEG, as in the PDF."""
    report = _readable(request, report_id, principal)
    uids = report.content.key_images
    if not 1 <= number <= len(uids):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"report {report_id} has {len(uids)} key images"
        )
    archive = _archive(request)
    with archive.sessions() as session:
        found = find_instances(session, report.study_instance_uid, None, uids[number - 1])
    path = archive.blobs.local_path(found[0].blob_key) if found else None
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"key image {number} is no longer stored")
    try:
        image = render(path, RenderParams(viewport=KEY_IMAGE_SIZE, quality=90))
    except RenderError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return Response(
        image.body,
        media_type=image.media_type,
        headers={"Content-Disposition": f'inline; filename="report-{report.id}-key-{number}.jpg"'},
    )


@router.get("/report-templates")
def templates(_: Reader) -> dict[str, list[TemplateField]]:
    """The structured templates (:mod:`storage.report_templates`): each one's fields
    as key (what a report's ``fields`` holds) and label, in order."""
    return {
        name: [TemplateField(key=key, label=label) for key, label in fields]
        for name, fields in TEMPLATES.items()
    }


def current_pdf(request: Request, report: ReportView) -> bytes:
    """The PDF of the report as its status is now: the current final report's archived
    document, byte for byte; a draft, or a final since replaced by an amendment, made
    now and watermarked DRAFT or AMENDED (the archived document of a superseded version
    was made while it was final, and says FINAL)."""
    if report.status is ReportStatus.FINAL and report.document_uid:
        try:
            return archived_pdf(_archive(request), report.study_instance_uid, report.document_uid)
        except DocumentError as exc:
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    return _pdf(request, report, status=report.status)


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _visible(principal: Principal) -> tuple[ReportStatus, ...] | None:
    return SIGNED if principal.role is Role.REFERRING else None


def _readable(request: Request, report_id: int, principal: Principal) -> ReportView:
    with _answering(), _archive(request).sessions() as session:
        report = get_report(session, report_id, principal.scope)
    request.state.audit_study = report.study_instance_uid
    visible = _visible(principal)
    if visible is not None and report.status not in visible:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report {report_id}")
    return report


@contextmanager
def _answering() -> Iterator[None]:
    """storage.reports errors as HTTP errors."""
    try:
        yield
    except ReportNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ReportConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ReportError as exc:  # ReportInvalid
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


_signing_locks = [threading.Lock() for _ in range(64)]


@contextmanager
def _signing(report_id: int) -> Iterator[None]:
    """One finalize of a report at a time in this process: a second caller waits,
    then finds it final (409) instead of archiving a second document. Across
    processes the conditional update in storage still lets only one succeed."""
    with _signing_locks[report_id % len(_signing_locks)]:
        yield


def _pdf(
    request: Request,
    report: ReportView,
    *,
    status: ReportStatus,
    signer: str = "",
    at: datetime | None = None,
) -> bytes:
    archive = _archive(request)
    settings: Settings = request.app.state.settings
    with archive.sessions() as session:
        subject = report_subject(session, report.study_instance_uid)
    content = report.content
    doc = ReportDocument(
        report_id=report.id,
        version=report.version,
        status=status.value,
        **vars(subject),
        template_title="" if content.template == "none" else content.template,
        fields=labelled(content.template, content.fields),
        findings=content.findings,
        impression=content.impression,
        free_text=content.free_text,
        author=report.author,
        finalized_by=signer or report.finalized_by,
        finalized_at=at or report.finalized_at,
        key_images=_key_images(archive, report),
        amends_version=report.version - 1 if report.previous_id is not None else None,
    )
    letterhead = Letterhead(settings.hospital_name, settings.hospital_logo, settings.report_font)
    try:
        return report_pdf(doc, letterhead)
    except ReportPdfError as exc:
        log.error("cannot make the PDF of report %s: %s", report.id, exc)
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc


def _key_images(archive: Archive, report: ReportView) -> list[bytes]:
    """The key images as JPEG, rendered with each file's own window (viewer.render)."""
    images: list[bytes] = []
    for uid in report.content.key_images:
        with archive.sessions() as session:
            found = find_instances(session, report.study_instance_uid, None, uid)
        path = archive.blobs.local_path(found[0].blob_key) if found else None
        if path is None:
            continue
        try:
            images.append(render(path, RenderParams(viewport=KEY_IMAGE_SIZE, quality=90)).body)
        except (RenderError, OSError) as exc:
            log.warning("key image %s of report %s not rendered: %s", uid, report.id, exc)
    return images


def _out(report: ReportView) -> ReportOut:
    content = report.content
    return ReportOut(
        id=report.id,
        study_instance_uid=report.study_instance_uid,
        patient_id=report.patient_id,
        issuer_of_patient_id=report.issuer_of_patient_id,
        version=report.version,
        previous_id=report.previous_id,
        status=report.status,
        template=content.template,
        fields=content.fields,
        findings=content.findings,
        impression=content.impression,
        free_text=content.free_text,
        key_images=list(content.key_images),
        author=report.author,
        finalized_by=report.finalized_by,
        finalized_at=report.finalized_at,
        document_uid=report.document_uid,
        created_at=report.created_at,
        updated_at=report.updated_at,
        pdf_url=f"/api/reports/{report.id}/pdf",
    )
