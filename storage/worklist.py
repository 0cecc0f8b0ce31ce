"""The radiologist's worklist: studies, newest first, with what a row shows.

Every criterion the standard defines goes through the QIDO-RS / C-FIND planner
(:mod:`storage.query`, PS3.4 C.2.2.2 matching), so a worklist search and a QIDO
search can never disagree: the patient name is matched folded and fuzzily (``nguyen``
finds ``Nguyễn``, ``dang`` finds ``Đặng``), the study date as a range, the modality
against ModalitiesInStudy. What DICOM has no attribute for, the sending site
(:attr:`storage.models.Study.source_site`, the node or ``--site`` the study came
from), is added here as one more column and condition on the same statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session

from storage.models import Study
from storage.query import Level, Query, QueryError, build_statement
from storage.reports import report_status
from storage.scope import EVERYTHING, Scope

# The QIDO keywords one worklist row is made of, in the order of WorklistRow's fields.
_KEYWORDS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientSex",
    "PatientBirthDate",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_DATE = re.compile(r"\d{8}")
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")


@dataclass(frozen=True)
class WorklistFilter:
    """What the radiologist typed; empty strings match everything."""

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    date_from: str = ""  # YYYYMMDD, inclusive
    date_to: str = ""  # YYYYMMDD, inclusive
    modality: str = ""
    site: str = ""


@dataclass(frozen=True)
class WorklistRow:
    study_instance_uid: str
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_sex: str
    patient_birth_date: str
    patient_age: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    referring_physician_name: str
    modalities: list[str]
    number_of_series: int
    number_of_instances: int
    source_site: str
    report: str | None = None  # the newest report version's status: draft, final, amended


def worklist(
    session: Session,
    wanted: WorklistFilter,
    limit: int,
    offset: int = 0,
    scope: Scope = EVERYTHING,
) -> tuple[list[WorklistRow], bool]:
    """One page of the studies ``scope`` sees that match, newest first, and whether more follow.

    Raises :class:`storage.query.QueryError` on a malformed criterion.
    """
    query = Query(level=Level.STUDY, match=_match_keys(wanted), fuzzy=True, scope=scope)
    query.limit, query.offset = limit + 1, offset  # one more: is there a next page?
    statement = build_statement(query, _KEYWORDS).add_columns(
        Study.source_site, report_status(Study.id)
    )
    site = wanted.site.strip()
    if site:
        statement = statement.where(
            func.lower(Study.source_site).like(f"%{_escape_like(site.lower())}%", escape="\\")
        )
    rows = [_row(row) for row in session.execute(statement)]
    return rows[:limit], len(rows) > limit


def _match_keys(wanted: WorklistFilter) -> dict[str, str]:
    match: dict[str, str] = {}
    name = " ".join(wanted.patient_name.split())
    if name:
        # Several words ("nguyen an") may sit in different name components: each
        # must appear, in order (PS3.4 C.2.2.2.4 wildcards). One word is a fuzzy
        # match on the start of any component, which the name index can serve.
        match["PatientName"] = f"*{'*'.join(name.split())}*" if " " in name else name
    for keyword, value in (
        ("PatientID", wanted.patient_id),
        ("AccessionNumber", wanted.accession_number),
    ):
        value = value.strip()
        if value:  # a prefix: IDs are often typed in part
            match[keyword] = value if value.endswith("*") else f"{value}*"
    for bound in (wanted.date_from, wanted.date_to):
        if bound and not _DATE.fullmatch(bound):
            raise QueryError(f"{bound!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    if wanted.date_from or wanted.date_to:
        match["StudyDate"] = f"{wanted.date_from}-{wanted.date_to}"
    modality = wanted.modality.strip().upper()
    if modality:
        if not _MODALITY.fullmatch(modality):
            raise QueryError(f"{wanted.modality!r} is not a modality (CT, MR, XA...)")
        match["ModalitiesInStudy"] = modality
    return match


def _row(row: Any) -> WorklistRow:
    values = dict(zip((*_KEYWORDS, "source_site", "report"), row, strict=True))
    return WorklistRow(
        study_instance_uid=values["StudyInstanceUID"],
        patient_name=values["PatientName"] or "",
        patient_id=values["PatientID"] or "",
        issuer_of_patient_id=values["IssuerOfPatientID"] or "",
        patient_sex=values["PatientSex"] or "",
        patient_birth_date=values["PatientBirthDate"] or "",
        patient_age=values["PatientAge"] or "",
        study_date=values["StudyDate"] or "",
        study_time=values["StudyTime"] or "",
        accession_number=values["AccessionNumber"] or "",
        study_description=values["StudyDescription"] or "",
        referring_physician_name=values["ReferringPhysicianName"] or "",
        modalities=[m for m in (values["ModalitiesInStudy"] or "").split("\\") if m],
        number_of_series=values["NumberOfStudyRelatedSeries"] or 0,
        number_of_instances=values["NumberOfStudyRelatedInstances"] or 0,
        source_site=values["source_site"] or "",
        report=values["report"],
    )


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
