"""Index lookups for retrieval: which stored files make up a study, series or instance.

WADO-RS, WADO-URI, C-MOVE and C-GET ask the index, never the blob store,
what to send; the answer carries what a sender needs without opening a file: the
blob key, the syntax it was received in, its hash (for ETags) and when it arrived
(for Last-Modified). Results come in viewing order: series number, then instance
number, UIDs breaking ties so the order is stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from storage.models import Instance, Series, Study
from storage.query import Level, Query, build_statement


@dataclass(frozen=True)
class StoredInstance:
    """One instance as the index knows it: enough to find, label and send its file."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    blob_key: str
    transfer_syntax_uid: str
    sha256: str
    file_size: int
    received_at: datetime  # always timezone-aware (UTC)
    rows: int | None
    number_of_frames: int | None

    @property
    def has_pixels(self) -> bool:
        """An image: the index saw Rows, so the file carries pixel data."""
        return self.rows is not None


@dataclass(frozen=True)
class SeriesVersion:
    """What changes whenever a series gains, loses or replaces an instance."""

    count: int
    latest: datetime | None
    last_id: int | None


def find_instances(
    session: Session, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    """Instances of a study, or of one of its series, or one instance, in viewing order.

    The hierarchy is checked: a series UID that belongs to another study, or an
    instance of another series, finds nothing.
    """
    statement = _scoped(select(*_STORED_COLUMNS), study, series, instance).order_by(*_VIEWING_ORDER)
    return [_stored(row) for row in session.execute(statement)]


def matching_instances(session: Session, match: dict[str, str]) -> list[StoredInstance]:
    """Instances matching C-MOVE / C-GET unique keys (PS3.4 C.4.2.2.1), in viewing order.

    ``match`` holds keys such as PatientID, StudyInstanceUID, SeriesInstanceUID,
    SOPInstanceUID (UID lists allowed); it goes through the query planner, so a
    retrieve matches exactly what a C-FIND with the same keys found.
    """
    statement = build_statement(Query(level=Level.IMAGE, match=match, with_defaults=False), [])
    statement = statement.add_columns(*_STORED_COLUMNS).order_by(None).order_by(*_VIEWING_ORDER)
    return [_stored(row) for row in session.execute(statement)]


def series_version(session: Session, study: str, series: str) -> SeriesVersion:
    """A cheap fingerprint of a series' content, for caching what is derived from it.

    Ingest only ever adds rows (a replaced instance is deleted and added again), so
    the count, the newest arrival and the highest row id change with every change.
    """
    statement = _scoped(
        select(func.count(Instance.id), func.max(Instance.received_at), func.max(Instance.id)),
        study,
        series,
        None,
    )
    count, latest, last_id = session.execute(statement).one()
    return SeriesVersion(int(count), as_utc(latest) if latest else None, last_id)


_STORED_COLUMNS = (
    Study.study_instance_uid,
    Series.series_instance_uid,
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.blob_key,
    Instance.transfer_syntax_uid,
    Instance.sha256,
    Instance.file_size,
    Instance.received_at,
    Instance.rows,
    Instance.number_of_frames,
)
_VIEWING_ORDER = (
    Series.series_number.is_(None),
    Series.series_number,
    Series.series_instance_uid,
    Instance.instance_number.is_(None),
    Instance.instance_number,
    Instance.sop_instance_uid,
)


def _stored(row: Any) -> StoredInstance:
    return StoredInstance(
        study_instance_uid=row[0],
        series_instance_uid=row[1],
        sop_instance_uid=row[2],
        sop_class_uid=row[3],
        blob_key=row[4],
        transfer_syntax_uid=row[5],
        sha256=row[6],
        file_size=row[7],
        received_at=as_utc(row[8]),
        rows=row[9],
        number_of_frames=row[10],
    )


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything the index writes is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _scoped(
    statement: Select[Any], study: str, series: str | None, instance: str | None
) -> Select[Any]:
    statement = (
        statement.select_from(Instance)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study)
    )
    if series is not None:
        statement = statement.where(Series.series_instance_uid == series)
    if instance is not None:
        statement = statement.where(Instance.sop_instance_uid == instance)
    return statement
