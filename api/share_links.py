"""Share links over HTTP: made by radiologists and admins, opened by anyone holding one.

Managing (admin, radiologist): ``POST /api/studies/{study}/share-links`` (lifetime,
optional PIN; the token is shown once), ``GET`` the same path to list them,
``DELETE /api/share-links/{id}`` to revoke.

Using: everything under ``/api/share/{token}`` is scoped to the link's study and
takes the PIN, when there is one, in the ``X-Share-PIN`` header (never in the URL,
which ends up in logs and browser history): the study's summary, its series and
instances, each instance rendered as JPEG (:func:`viewer.render.render`), its
signed reports as PDF and the study as a ZIP with DICOMDIR. The token is the
credential: an unknown one is a 401, an expired or revoked one a 410, a wrong PIN a
403; an instance or report of another study is a 404. The token gives access to
nothing else (DICOMweb and the rest of ``/api`` want a user). Every use is audited
as ``share-link:<id>`` with the study.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.audit import audited, note_failed_sign_in
from api.auth import Principal, memory, require_role
from api.downloads import study_zip
from api.params import RowId
from api.reports import current_pdf
from storage import Archive
from storage.reports import SIGNED, ReportNotFound, get_report, report_subject, study_reports
from storage.retrieve import find_instances
from storage.share_links import (
    LinkGone,
    LinkInvalid,
    LinkUnknown,
    ShareLinkView,
    WrongPin,
    create_link,
    open_link,
    revoke_link,
    study_links,
)
from storage.users import Role
from viewer.render import RenderError, RenderParams, render

router = APIRouter(prefix="/api", tags=["share links"])
Writer = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.RADIOLOGIST))]
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="pacs", Bearer'}


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in_minutes: int = Field(72 * 60, ge=5, le=30 * 24 * 60)
    pin: str = Field("", max_length=12, description="4-12 digits, sent apart from the link")


class LinkOut(BaseModel):
    id: int
    study_instance_uid: str
    created_by: str
    has_pin: bool
    uses: int
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    active: bool


class NewLinkOut(LinkOut):
    token: str
    url: str


class SharedInstance(BaseModel):
    sop_instance_uid: str
    frames: int
    rendered_url: str


class SharedSeries(BaseModel):
    series_instance_uid: str
    instances: list[SharedInstance]


class SharedReport(BaseModel):
    id: int
    version: int
    status: str
    findings: str
    impression: str
    free_text: str
    fields: dict[str, str]
    finalized_by: str
    finalized_at: datetime | None
    pdf_url: str


class SharedStudy(BaseModel):
    study_instance_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    study_description: str
    modalities: str
    series: list[SharedSeries]
    reports: list[SharedReport]
    download_url: str


@router.post(
    "/studies/{study}/share-links",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(audited("share-create"))],
)
def create(request: Request, study: str, body: LinkBody, principal: Writer) -> NewLinkOut:
    with _archive(request).sessions() as session:
        try:
            token, link = create_link(
                session,
                study,
                principal.username,
                timedelta(minutes=body.expires_in_minutes),
                body.pin,
            )
        except LinkUnknown as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        except LinkInvalid as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        session.commit()
    return NewLinkOut(**_out(link).model_dump(), token=token, url=f"/api/share/{token}")


@router.get("/studies/{study}/share-links", dependencies=[Depends(audited("share-list"))])
def of_study(request: Request, study: str, _: Writer) -> list[LinkOut]:
    with _archive(request).sessions() as session:
        return [_out(link) for link in study_links(session, study)]


@router.delete("/share-links/{link_id}", dependencies=[Depends(audited("share-revoke"))])
def revoke(request: Request, link_id: RowId, principal: Writer) -> LinkOut:
    with _archive(request).sessions() as session:
        try:
            link = revoke_link(session, link_id, principal.scope)
        except LinkUnknown as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        session.commit()
    request.state.audit_study = link.study_instance_uid
    return _out(link)


async def shared(
    request: Request,
    token: str,
    pin: Annotated[str, Header(alias="X-Share-PIN", max_length=12)] = "",
) -> ShareLinkView:
    """Dependency: the link ``token`` opens (PIN checked, use counted), or 401/403/410.

    A refused token or PIN is audited as a failed sign-in (the token is the credential).
    """
    token = token[:100]
    key = hashlib.sha256(f"{token}\0{pin}".encode()).hexdigest()
    verified = bool(pin) and memory(request).share_pins.get(key) is not None
    try:
        link = await run_in_threadpool(_open, _archive(request), token, pin, verified)
    except HTTPException:
        note_failed_sign_in(request, "share-link")
        raise
    if pin and not verified:
        memory(request).share_pins.put(key, True)  # expiry, revocation: read on every use
    request.state.principal = Principal(f"share-link:{link.id}", Role.REFERRING)
    request.state.audit_study = link.study_instance_uid
    return link


Shared = Annotated[ShareLinkView, Depends(shared)]


@router.get("/share/{token}", dependencies=[Depends(audited("share-open"))])
def open_study(request: Request, link: Shared) -> SharedStudy:
    """The shared study: who and what, its images, its signed reports."""
    study = link.study_instance_uid
    base = f"/api/share/{request.path_params['token']}"
    with _archive(request).sessions() as session:
        subject = report_subject(session, study)
        stored = find_instances(session, study)
        reports = study_reports(session, study, SIGNED)
    series: dict[str, list[SharedInstance]] = {}
    for instance in stored:
        if instance.has_pixels:
            series.setdefault(instance.series_instance_uid, []).append(
                SharedInstance(
                    sop_instance_uid=instance.sop_instance_uid,
                    frames=instance.number_of_frames or 1,
                    rendered_url=f"{base}/instances/{instance.sop_instance_uid}/rendered",
                )
            )
    return SharedStudy(
        study_instance_uid=study,
        patient_name=subject.patient_name,
        patient_id=subject.patient_id,
        study_date=subject.study_date,
        study_description=subject.study_description,
        modalities=subject.modalities,
        series=[SharedSeries(series_instance_uid=k, instances=v) for k, v in series.items()],
        reports=[
            SharedReport(
                id=r.id,
                version=r.version,
                status=r.status.value,
                findings=r.content.findings,
                impression=r.content.impression,
                free_text=r.content.free_text,
                fields=r.content.fields,
                finalized_by=r.finalized_by,
                finalized_at=r.finalized_at,
                pdf_url=f"{base}/reports/{r.id}/pdf",
            )
            for r in reports
        ],
        download_url=f"{base}/download",
    )


@router.get(
    "/share/{token}/instances/{instance}/rendered",
    dependencies=[Depends(audited("share-rendered"))],
)
def rendered(
    request: Request,
    instance: str,
    link: Shared,
    frame: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """One frame of an image of the shared study as JPEG, with the file's own window."""
    archive = _archive(request)
    with archive.sessions() as session:
        found = find_instances(session, link.study_instance_uid, None, instance)
    path = archive.blobs.local_path(found[0].blob_key) if found else None
    if path is None or not found[0].has_pixels:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image in the shared study")
    try:
        image = render(path, RenderParams(frame=frame))
    except RenderError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    return Response(image.body, media_type=image.media_type)


@router.get("/share/{token}/reports/{report_id}/pdf", dependencies=[Depends(audited("share-pdf"))])
def report_pdf(request: Request, report_id: RowId, link: Shared) -> Response:
    """A signed report of the shared study, saying whether it is still the final one."""
    with _archive(request).sessions() as session:
        try:
            report = get_report(session, report_id)
        except ReportNotFound:
            report = None
    if (
        report is None
        or report.study_instance_uid != link.study_instance_uid
        or report.status not in SIGNED
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report in the shared study")
    body = current_pdf(request, report)
    name = f"report-{report.id}-v{report.version}.pdf"
    return Response(
        body,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/share/{token}/download", dependencies=[Depends(audited("share-download"))])
async def download(request: Request, link: Shared) -> StreamingResponse:
    """The shared study as a ZIP with DICOMDIR."""
    return await study_zip(request, link.study_instance_uid)


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _open(archive: Archive, token: str, pin: str, pin_verified: bool) -> ShareLinkView:
    with archive.sessions() as session:
        try:
            link = open_link(session, token, pin, pin_verified=pin_verified)
        except LinkUnknown as exc:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), _CHALLENGE) from exc
        except LinkGone as exc:
            raise HTTPException(status.HTTP_410_GONE, str(exc)) from exc
        except WrongPin as exc:
            session.commit()  # the failed attempt counts
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
        session.commit()
    return link


def _out(link: ShareLinkView) -> LinkOut:
    return LinkOut(
        id=link.id,
        study_instance_uid=link.study_instance_uid,
        created_by=link.created_by,
        has_pin=link.has_pin,
        uses=link.uses,
        created_at=link.created_at,
        expires_at=link.expires_at,
        revoked_at=link.revoked_at,
        active=link.active,
    )
