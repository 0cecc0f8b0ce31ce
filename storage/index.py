"""Writing instances into the SQL index (and taking them out).

Counters and computed sets (NumberOfStudyRelatedInstances, ModalitiesInStudy, ...)
are updated with SQL expressions inside the same transaction as the instance row,
so concurrent associations never lose an increment.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from pacs.charset import name_words
from storage.attributes import IndexRecord
from storage.models import Instance, Patient, PatientNameWord, Series, Study


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


class StaleParents(RuntimeError):
    """A cached parent row is gone or changed (another process rebuilt the index)."""


@dataclass
class Parents:
    """Row ids of an instance's series and study, and the study's SOP classes."""

    series_pk: int
    study_pk: int
    sop_classes: set[str]


class ParentCache:
    """Series UID -> :class:`Parents`, so an instance of a series already seen costs
    one INSERT and two UPDATEs instead of a round of lookups (the common case:
    a modality sends a whole series). Bounded; entries are verified by the UPDATEs
    (id *and* UID must match), so a stale entry is detected, never trusted."""

    def __init__(self, size: int = 4096) -> None:
        self._entries: OrderedDict[str, Parents] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, series_uid: str) -> Parents | None:
        with self._lock:
            parents = self._entries.get(series_uid)
            if parents is not None:
                self._entries.move_to_end(series_uid)
            return parents

    def put(self, series_uid: str, parents: Parents) -> None:
        with self._lock:
            self._entries[series_uid] = parents
            self._entries.move_to_end(series_uid)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def stored_sha256(conn: Connection, sop_instance_uid: str) -> str | None:
    """The SHA-256 of the instance already stored under this UID, if any."""
    return conn.scalar(_SHA256_OF, {"uid": sop_instance_uid})


def add_instance(
    session: Session,
    record: IndexRecord,
    stored: dict[str, Any],
    *,
    site: str = "",
    cache: ParentCache | None = None,
) -> None:
    """Insert one instance row, creating its patient, study and series as needed.

    ``stored`` holds the blob columns (blob_key, file_size, sha256,
    transfer_syntax_uid, source_ae). ``site`` is the sending node's site, used as
    the patient's issuer when the dataset carries no IssuerOfPatientID. Raises
    :class:`StaleParents` when ``cache`` held ids that no longer match.
    """
    now = datetime.now(UTC)
    series_uid = record.series["series_instance_uid"]
    study_uid = record.study["study_instance_uid"]
    parents = cache.get(series_uid) if cache else None
    new_series = parents is None and _series_pk(session, series_uid) is None
    if parents is None:
        parents = _find_or_create_parents(session, record, stored["source_ae"], site, now)
    conn = session.connection()
    conn.execute(
        _INSERT_INSTANCE,
        {"series_pk": parents.series_pk, "received_at": now, **record.instance, **stored},
    )
    counted = conn.execute(
        _COUNT_IN_SERIES, {"pk": parents.series_pk, "uid": series_uid, "now": now}
    )
    counted_study = conn.execute(
        _COUNT_IN_STUDY_NEW_SERIES if new_series else _COUNT_IN_STUDY,
        {"pk": parents.study_pk, "uid": study_uid, "now": now},
    )
    if counted.rowcount != 1 or counted_study.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleParents(series_uid)
    if new_series:
        _recompute_modalities(session, parents.study_pk)
    if record.instance["sop_class_uid"] not in parents.sop_classes:
        parents.sop_classes = _add_sop_class(
            session, parents.study_pk, record.instance["sop_class_uid"]
        )
    if cache is not None:
        cache.put(series_uid, parents)


# Prebuilt statements: building them per instance costs more than running them.
_SHA256_OF = select(Instance.sha256).where(Instance.sop_instance_uid == bindparam("uid"))
_INSERT_INSTANCE = insert(Instance)
_COUNT_IN_SERIES = (
    update(Series)
    .where(Series.id == bindparam("pk"), Series.series_instance_uid == bindparam("uid"))
    .values(number_of_instances=Series.number_of_instances + 1, updated_at=bindparam("now"))
)
_STUDY_ROW = and_(Study.id == bindparam("pk"), Study.study_instance_uid == bindparam("uid"))
_COUNT_IN_STUDY = (
    update(Study)
    .where(_STUDY_ROW)
    .values(number_of_instances=Study.number_of_instances + 1, updated_at=bindparam("now"))
)
_COUNT_IN_STUDY_NEW_SERIES = _COUNT_IN_STUDY.values(number_of_series=Study.number_of_series + 1)


def _series_pk(session: Session, series_uid: str) -> int | None:
    return session.scalar(select(Series.id).where(Series.series_instance_uid == series_uid))


def _find_or_create_parents(
    session: Session, record: IndexRecord, source_ae: str, site: str, now: datetime
) -> Parents:
    patient = _patient(session, record.patient, site)
    study = _study(session, record.study, patient, source_ae, site, now)
    series = _series(session, record.series, study, now)
    classes = set(filter(None, study.sop_classes_in_study.split("\\")))
    return Parents(series.id, study.id, classes)


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
        words = name_words(patient.patient_name_key)
        if words:
            rows = [{"word": word, "patient_pk": patient.id} for word in words]
            session.execute(insert(PatientNameWord), rows)
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


def _series(session: Session, values: dict[str, Any], study: Study, now: datetime) -> Series:
    uid = values["series_instance_uid"]
    series = session.scalar(select(Series).where(Series.series_instance_uid == uid))
    if series is None:
        series = Series(**values, study_pk=study.id, updated_at=now)
        session.add(series)
        session.flush()
    return series


def _add_sop_class(session: Session, study_pk: int, sop_class: str) -> set[str]:
    current = session.scalar(select(Study.sop_classes_in_study).where(Study.id == study_pk)) or ""
    classes = {*filter(None, current.split("\\")), sop_class}
    session.execute(
        update(Study)
        .where(Study.id == study_pk)
        .values(sop_classes_in_study="\\".join(sorted(classes)))
        .execution_options(synchronize_session=False)
    )
    return classes


def _recompute_modalities(session: Session, study_pk: int) -> None:
    modalities = session.scalars(
        select(func.distinct(Series.modality)).where(Series.study_pk == study_pk)
    ).all()
    joined = "\\".join(sorted(m for m in modalities if m))
    session.execute(update(Study).where(Study.id == study_pk).values(modalities_in_study=joined))
