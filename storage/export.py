"""What an export (a study or series as a DICOM File-set) needs from the index.

One query gives, per instance in viewing order, the file to send and the values its
DICOMDIR records carry (PS3.3 F.5: PATIENT, STUDY, SERIES and IMAGE records), so
image instances are described without opening their files.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Instance, Patient, Series, Study
from storage.retrieve import StoredInstance, find_instances


@dataclass(frozen=True)
class ExportedInstance:
    stored: StoredInstance
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    study_description: str
    study_id: str
    accession_number: str
    modality: str
    series_number: int | None
    instance_number: int | None


def export_instances(
    session: Session, study: str, series: str | None = None
) -> list[ExportedInstance]:
    """The study's (or series') instances in viewing order, with their record values."""
    stored = find_instances(session, study, series)
    if not stored:
        return []
    statement = (
        select(
            Instance.sop_instance_uid,
            Patient.patient_id,
            Patient.patient_name,
            Study.study_date,
            Study.study_time,
            Study.study_description,
            Study.study_id,
            Study.accession_number,
            Series.modality,
            Series.series_number,
            Instance.instance_number,
        )
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(Study.study_instance_uid == study)
    )
    if series is not None:
        statement = statement.where(Series.series_instance_uid == series)
    values = {row[0]: row[1:] for row in session.execute(statement)}
    # An instance replaced between the two reads is left out rather than half-described.
    return [
        ExportedInstance(s, *values[s.sop_instance_uid])
        for s in stored
        if s.sop_instance_uid in values
    ]
