"""Writing instances into the SQL index (and taking them out).

Counters and computed sets (NumberOfStudyRelatedInstances, ModalitiesInStudy, ...)
are updated with SQL expressions inside the same transaction as the instance row,
so concurrent associations never lose an increment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from storage.attributes import IndexRecord
from storage.models import Instance, Patient, Series, Study


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def add_instance(
    session: Session, record: IndexRecord, stored: dict[str, Any], *, site: str = ""
) -> Instance:
    """Insert one instance row, creating its patient, study and series as needed.

    ``stored`` holds the blob columns (blob_key, file_size, sha256,
    transfer_syntax_uid, source_ae). ``site`` is the sending node's site, used as
    the patient's issuer when the dataset carries no IssuerOfPatientID.
    """
    now = datetime.now(UTC)
    patient = _patient(session, record.patient, site)
    study = _study(session, record.study, patient, stored["source_ae"], site, now)
    series, new_series = _series(session, record.series, study, now)
    instance = Instance(series_pk=series.id, received_at=now, **record.instance, **stored)
    session.add(instance)
    session.flush()
    session.execute(
        update(Series)
        .where(Series.id == series.id)
        .values(number_of_instances=Series.number_of_instances + 1, updated_at=now)
    )
    study_changes: dict[str, Any] = {
        "number_of_instances": Study.number_of_instances + 1,
        "updated_at": now,
    }
    if new_series:
        study_changes["number_of_series"] = Study.number_of_series + 1
    session.execute(update(Study).where(Study.id == study.id).values(**study_changes))
    _refresh_computed_sets(session, study.id, record, new_series)
    return instance


def remove_instance(session: Session, instance: Instance) -> None:
    """Delete an instance row, its series and study when they become empty."""
    series = session.get_one(Series, instance.series_pk)
    study = session.get_one(Study, series.study_pk)
    session.execute(delete(Instance).where(Instance.id == instance.id))
    session.execute(
        update(Series)
        .where(Series.id == series.id)
        .values(number_of_instances=Series.number_of_instances - 1)
    )
    session.execute(
        update(Study)
        .where(Study.id == study.id)
        .values(number_of_instances=Study.number_of_instances - 1)
    )
    session.refresh(series)
    if series.number_of_instances <= 0:
        session.execute(delete(Series).where(Series.id == series.id))
        session.execute(
            update(Study)
            .where(Study.id == study.id)
            .values(number_of_series=Study.number_of_series - 1)
        )
        session.refresh(study)
        if study.number_of_series <= 0:
            session.execute(delete(Study).where(Study.id == study.id))
        else:
            _recompute_modalities(session, study.id)


def _patient(session: Session, values: dict[str, Any], site: str) -> Patient:
    issuer = values["issuer"] or site
    patient = session.scalar(
        select(Patient).where(Patient.issuer == issuer, Patient.patient_id == values["patient_id"])
    )
    if patient is None:
        patient = Patient(**{**values, "issuer": issuer})
        session.add(patient)
        session.flush()
    return patient


def _study(
    session: Session,
    values: dict[str, Any],
    patient: Patient,
    source_ae: str,
    site: str,
    now: datetime,
) -> Study:
    uid = values["study_instance_uid"]
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        study = Study(
            **values,
            patient_pk=patient.id,
            source_ae=source_ae,
            source_site=site,
            created_at=now,
            updated_at=now,
        )
        session.add(study)
        session.flush()
    return study


def _series(
    session: Session, values: dict[str, Any], study: Study, now: datetime
) -> tuple[Series, bool]:
    uid = values["series_instance_uid"]
    series = session.scalar(select(Series).where(Series.series_instance_uid == uid))
    if series is not None:
        return series, False
    series = Series(**values, study_pk=study.id, updated_at=now)
    session.add(series)
    session.flush()
    return series, True


def _refresh_computed_sets(
    session: Session, study_pk: int, record: IndexRecord, new_series: bool
) -> None:
    if new_series:
        _recompute_modalities(session, study_pk)
    sop_class = record.instance["sop_class_uid"]
    current = session.scalar(select(Study.sop_classes_in_study).where(Study.id == study_pk)) or ""
    if sop_class not in current.split("\\"):
        joined = "\\".join(sorted(filter(None, [*current.split("\\"), sop_class])))
        session.execute(
            update(Study).where(Study.id == study_pk).values(sop_classes_in_study=joined)
        )


def _recompute_modalities(session: Session, study_pk: int) -> None:
    modalities = session.scalars(
        select(func.distinct(Series.modality)).where(Series.study_pk == study_pk)
    ).all()
    joined = "\\".join(sorted(m for m in modalities if m))
    session.execute(update(Study).where(Study.id == study_pk).values(modalities_in_study=joined))
