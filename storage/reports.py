"""Radiology reports: drafts, signing, amendments, and the lists a clinician reads.

A report's life: a radiologist creates a **draft** for a study and edits it; finalizing
signs it (the signer's display name and the time) and makes it **final**, after which
nothing in it ever changes. A correction is an **amendment**: a new draft version
linked to the final it corrects; when that draft is finalized in turn, the old final
becomes **amended** (superseded, still kept and readable). Every version is its own
row, so the history of what was signed is never lost.

Errors are exceptions the HTTP side maps to status codes: :class:`ReportNotFound`
(404), :class:`ReportConflict` (409: the report is not in a state that allows it),
:class:`ReportInvalid` (422). Every check is made before anything is written, and
state changes are conditional updates (``WHERE status = 'draft'``), so two people
finalizing at once cannot both succeed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.header import is_valid_uid
from storage.models import Instance, Patient, Report, Series, Study
from storage.report_templates import TEMPLATES
from storage.retrieve import as_utc
from storage.scope import EVERYTHING, Scope, visible_studies

MAX_TEXT = 20_000  # characters of findings, impression or free text
MAX_FIELD = 2_000  # characters of one structured field
MAX_KEY_IMAGES = 12
MAX_SIGNER = 128


class ReportStatus(StrEnum):
    DRAFT = "draft"
    FINAL = "final"
    AMENDED = "amended"  # a final replaced by a later finalized version


SIGNED = (ReportStatus.FINAL, ReportStatus.AMENDED)


class ReportError(ValueError):
    """A report operation that cannot be done; nothing was changed."""


class ReportNotFound(ReportError):
    """No such report, or no such study to report on."""


class ReportConflict(ReportError):
    """The report's state forbids it: editing a final, finalizing twice..."""


class ReportInvalid(ReportError):
    """Malformed content: unknown template or field, text too long, foreign key image."""


@dataclass(frozen=True)
class ReportContent:
    """What the radiologist writes."""

    template: str = "none"
    fields: dict[str, str] = field(default_factory=dict)
    findings: str = ""
    impression: str = ""
    free_text: str = ""
    key_images: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportView:
    """One report version, detached from the session."""

    id: int
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    version: int
    previous_id: int | None
    status: ReportStatus
    content: ReportContent
    author: str
    finalized_by: str
    finalized_at: datetime | None
    document_uid: str
    created_at: datetime
    updated_at: datetime


def create_draft(
    session: Session, study_uid: str, content: ReportContent, author: str
) -> ReportView:
    """A new draft (version 1) for the study; ReportNotFound if the study is not indexed."""
    study = _study(session, study_uid)
    _check(session, study.id, content)
    now = datetime.now(UTC)
    report = Report(
        study_pk=study.id,
        version=1,
        status=ReportStatus.DRAFT.value,
        author=author[:64],
        created_at=now,
        updated_at=now,
        **_columns(content),
    )
    session.add(report)
    session.flush()
    return get_report(session, report.id)


def get_report(session: Session, report_id: int, scope: Scope = EVERYTHING) -> ReportView:
    """One report; :class:`ReportNotFound` also when ``scope`` may not see its study."""
    statement = _views().where(Report.id == report_id)
    if not scope.everything:
        statement = statement.where(visible_studies(scope))
    row = session.execute(statement).first()
    if row is None:
        raise ReportNotFound(f"no report {report_id}")
    return _view(row)


def edit_draft(session: Session, report_id: int, changes: dict[str, Any]) -> ReportView:
    """Change some of a draft's content (keys of :class:`ReportContent`)."""
    current = get_report(session, report_id)
    if current.status is not ReportStatus.DRAFT:
        raise ReportConflict(f"report {report_id} is {current.status}: only a draft can be edited")
    unknown = set(changes) - set(ReportContent.__dataclass_fields__)
    if unknown:
        raise ReportInvalid(f"unknown report attributes: {', '.join(sorted(unknown))}")
    if "key_images" in changes:
        changes = {**changes, "key_images": tuple(changes["key_images"])}
    content = replace(current.content, **changes)
    study_pk = session.scalar(select(Report.study_pk).where(Report.id == report_id))
    assert study_pk is not None
    _check(session, study_pk, content)
    done = session.execute(
        update(Report)
        .where(Report.id == report_id, Report.status == ReportStatus.DRAFT.value)
        .values(updated_at=datetime.now(UTC), **_columns(content))
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise ReportConflict(f"report {report_id} was finalized meanwhile")
    return get_report(session, report_id)


def check_draft(session: Session, report_id: int) -> ReportView:
    """The report, if it is a draft that may be finalized; else ReportConflict."""
    report = get_report(session, report_id)
    if report.status is not ReportStatus.DRAFT:
        raise ReportConflict(f"report {report_id} is already {report.status}")
    return report


def check_signer(signer: str) -> str:
    name = " ".join(signer.split())
    if not name or len(name) > MAX_SIGNER or not name.isprintable():
        raise ReportInvalid(f"the signer's name must be 1 to {MAX_SIGNER} printable characters")
    return name


def finalize(
    session: Session, report_id: int, signer: str, at: datetime, document_uid: str = ""
) -> ReportView:
    """Sign a draft: it becomes final and immutable; the version it amends (if any)
    becomes amended. ``document_uid`` names its archived Encapsulated PDF."""
    report = check_draft(session, report_id)
    done = session.execute(
        update(Report)
        .where(Report.id == report_id, Report.status == ReportStatus.DRAFT.value)
        .values(
            status=ReportStatus.FINAL.value,
            finalized_by=check_signer(signer),
            finalized_at=at,
            document_uid=document_uid,
            updated_at=at,
        )
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise ReportConflict(f"report {report_id} is already final")
    if report.previous_id is not None:
        session.execute(
            update(Report)
            .where(Report.id == report.previous_id)
            .values(status=ReportStatus.AMENDED.value, updated_at=at)
        )
    return get_report(session, report_id)


def amend(session: Session, report_id: int, author: str) -> ReportView:
    """A new draft version correcting a final report, with its content to start from."""
    final = get_report(session, report_id)
    if final.status is not ReportStatus.FINAL:
        raise ReportConflict(
            f"report {report_id} is {final.status}: only the current final report can be amended"
        )
    pending = session.scalar(select(Report.id).where(Report.previous_id == report_id))
    if pending is not None:
        raise ReportConflict(f"report {report_id} already has an amendment (report {pending})")
    study_pk = session.scalar(select(Report.study_pk).where(Report.id == report_id))
    now = datetime.now(UTC)
    draft = Report(
        study_pk=study_pk,
        version=final.version + 1,
        previous_id=report_id,
        status=ReportStatus.DRAFT.value,
        author=author[:64],
        created_at=now,
        updated_at=now,
        **_columns(final.content),
    )
    session.add(draft)
    try:
        session.flush()
    except IntegrityError as exc:  # another amendment won the race
        raise ReportConflict(f"report {report_id} already has an amendment") from exc
    return get_report(session, draft.id)


def study_reports(
    session: Session, study_uid: str, statuses: tuple[ReportStatus, ...] | None = None
) -> list[ReportView]:
    """Every version of every report on the study, oldest first; 404 for an unknown study."""
    _study(session, study_uid)
    statement = _views().where(Study.study_instance_uid == study_uid)
    return _listed(session, statement, statuses)


def patient_reports(
    session: Session,
    patient_id: str,
    issuer: str = "",
    statuses: tuple[ReportStatus, ...] | None = None,
    scope: Scope = EVERYTHING,
) -> list[ReportView]:
    """Every report on the patient's studies that ``scope`` sees (identity: issuer + PatientID)."""
    statement = _views().where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    if not scope.everything:
        statement = statement.where(visible_studies(scope))
    return _listed(session, statement, statuses)


@dataclass(frozen=True)
class ReportSubject:
    """Who and what the report is about, as the index has it (the PDF's header)."""

    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_description: str
    accession_number: str
    modalities: str
    referring_physician_name: str


def report_subject(session: Session, study_uid: str) -> ReportSubject:
    study = _study(session, study_uid)
    patient = study.patient
    return ReportSubject(
        patient_name=patient.patient_name,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        study_date=study.study_date,
        study_description=study.study_description,
        accession_number=study.accession_number,
        # The report's own DOC series is not what was examined.
        modalities=", ".join(m for m in study.modalities_in_study.split("\\") if m and m != "DOC"),
        referring_physician_name=study.referring_physician_name,
    )


def report_status(study_pk: ColumnElement[int]) -> Any:
    """A scalar subquery: the status of the study's newest report version, or NULL
    (the worklist's report column)."""
    return (
        select(Report.status)
        .where(Report.study_pk == study_pk)
        .order_by(Report.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _listed(
    session: Session, statement: Select[Any], statuses: tuple[ReportStatus, ...] | None
) -> list[ReportView]:
    if statuses is not None:
        statement = statement.where(Report.status.in_([s.value for s in statuses]))
    return [_view(row) for row in session.execute(statement.order_by(Report.id))]


def _study(session: Session, study_uid: str) -> Study:
    study = (
        session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if is_valid_uid(study_uid)
        else None
    )
    if study is None:
        raise ReportNotFound(f"no study {study_uid[:80]}")
    return study


def _check(session: Session, study_pk: int, content: ReportContent) -> None:
    if content.template not in TEMPLATES:
        raise ReportInvalid(
            f"unknown template {content.template[:40]!r}: one of {', '.join(TEMPLATES)}"
        )
    allowed = {key for key, _ in TEMPLATES[content.template]}
    unknown = set(content.fields) - allowed
    if unknown:
        raise ReportInvalid(
            f"template {content.template} has no field {', '.join(sorted(unknown))[:200]}"
        )
    for key, value in content.fields.items():
        if not isinstance(value, str) or len(value) > MAX_FIELD:
            raise ReportInvalid(f"field {key} must be text of at most {MAX_FIELD} characters")
    for name in ("findings", "impression", "free_text"):
        if len(getattr(content, name)) > MAX_TEXT:
            raise ReportInvalid(f"{name} is longer than {MAX_TEXT} characters")
    images = content.key_images
    if len(images) > MAX_KEY_IMAGES or len(set(images)) != len(images):
        raise ReportInvalid(f"at most {MAX_KEY_IMAGES} distinct key images")
    if images:
        bad = [uid for uid in images if not is_valid_uid(uid)]
        found = set(
            session.scalars(
                select(Instance.sop_instance_uid)
                .join(Series, Instance.series_pk == Series.id)
                .where(
                    Series.study_pk == study_pk,
                    Instance.sop_instance_uid.in_(images),
                    Instance.rows.is_not(None),  # an image, not a document
                )
            )
        )
        missing = bad or [uid for uid in images if uid not in found]
        if missing:
            raise ReportInvalid(f"key image {missing[0][:80]} is not an image of this study")


def _columns(content: ReportContent) -> dict[str, Any]:
    return {
        "template": content.template,
        "fields": json.dumps(content.fields, ensure_ascii=False),
        "findings": content.findings,
        "impression": content.impression,
        "free_text": content.free_text,
        "key_images": json.dumps(list(content.key_images)),
    }


def _views() -> Select[Any]:
    return (
        select(Report, Study.study_instance_uid, Patient.patient_id, Patient.issuer)
        .join(Study, Report.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .execution_options(populate_existing=True)  # conditional updates change rows
    )


def _view(row: Any) -> ReportView:
    report, study_uid, patient_id, issuer = row
    return ReportView(
        id=report.id,
        study_instance_uid=study_uid,
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        version=report.version,
        previous_id=report.previous_id,
        status=ReportStatus(report.status),
        content=ReportContent(
            template=report.template,
            fields=json.loads(report.fields),
            findings=report.findings,
            impression=report.impression,
            free_text=report.free_text,
            key_images=tuple(json.loads(report.key_images)),
        ),
        author=report.author,
        finalized_by=report.finalized_by,
        finalized_at=as_utc(report.finalized_at) if report.finalized_at else None,
        document_uid=report.document_uid,
        created_at=as_utc(report.created_at),
        updated_at=as_utc(report.updated_at),
    )
