"""The audit trail in the index: appended in batches, read with filters, never changed.

Nothing here updates or deletes a row: the trail is append-only by construction
(:func:`append_events` is the one write), so no route can rewrite history. The
events follow IHE ATNA (RFC 3881, DICOM PS3.15 A.5): ``event_type`` is the ATNA
event and ``outcome`` its EventOutcomeIndicator.

The request path only queues events; :func:`append_events` runs on the writer
thread and fills in what a request does not know cheaply: the PatientID (and the
sending site, for callers bound to no site) of every study named in the batch,
read in one query for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import AuditEvent, Patient, Study
from storage.retrieve import as_utc

MAX_PAGE = 1000
_EXPORT_CHUNK = 1000
_SITE_SEPARATOR = ","


@dataclass(frozen=True)
class AuditRecord:
    """One audit event, detached from the database session."""

    id: int
    at: datetime
    username: str
    role: str
    site: str
    client: str
    action: str
    event_type: str
    outcome: int
    method: str
    path: str
    status: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    patient_id: str


@dataclass(frozen=True)
class AuditFilter:
    """What to look for; an empty field matches everything.

    ``site`` matches one site of a row (a user of two sites has both in its rows);
    ``since`` is inclusive, ``until`` exclusive.
    """

    user: str = ""
    role: str = ""
    site: str = ""
    action: str = ""
    event_type: str = ""
    study: str = ""
    patient_id: str = ""
    outcome: int | None = None
    client: str = ""
    since: datetime | None = None
    until: datetime | None = None


def join_sites(sites: Sequence[str] | frozenset[str]) -> str:
    """The ``site`` column value for a caller of ``sites`` (sorted, comma-joined).

    The archive's own site is the empty name; it adds nothing to the list.
    """
    return _SITE_SEPARATOR.join(sorted(site for site in sites if site))


def append_events(session: Session, events: list[dict[str, Any]]) -> None:
    """Insert ``events`` (column -> value), first resolving the studies they name.

    An event with a study UID and no ``patient_id`` gets the study's PatientID, and
    its ``site`` when the caller had none (an admin, a share link); studies not in
    the index (a refused STOW, a UID that does not exist) leave them empty.
    """
    wanted = {e["study_instance_uid"] for e in events if e.get("study_instance_uid")}
    wanted -= {""}
    if wanted:
        known = {
            uid: (patient_id, site)
            for uid, patient_id, site in session.execute(
                select(Study.study_instance_uid, Patient.patient_id, Study.source_site)
                .join(Patient, Study.patient_pk == Patient.id)
                .where(Study.study_instance_uid.in_(wanted))
            )
        }
        for event in events:
            found = known.get(event.get("study_instance_uid", ""))
            if found is None:
                continue
            if not event.get("patient_id"):
                event["patient_id"] = found[0]
            if not event.get("site"):
                event["site"] = found[1]
    session.execute(insert(AuditEvent), events)


def audit_page(
    session: Session, where: AuditFilter, limit: int = 100, before: int | None = None
) -> list[AuditRecord]:
    """Up to ``limit`` events matching ``where``, newest first, with ids below ``before``.

    Paging is by id (keyset): the next page is ``before=<last id of this one>``,
    which stays correct while new events are appended, unlike an offset.
    """
    query = _filtered(where).order_by(AuditEvent.id.desc()).limit(min(max(limit, 1), MAX_PAGE))
    if before is not None:
        query = query.where(AuditEvent.id < before)
    return [_record(row) for row in session.scalars(query)]


def export_events(sessions: sessionmaker[Session], where: AuditFilter) -> Iterator[AuditRecord]:
    """Every event matching ``where``, newest first, in constant memory.

    Read in id-keyed chunks, each in its own short session, so a long export
    holds no transaction open while the client reads slowly.
    """
    before: int | None = None
    while True:
        with sessions() as session:
            chunk = audit_page(session, where, _EXPORT_CHUNK, before)
        yield from chunk
        if len(chunk) < _EXPORT_CHUNK:
            return
        before = chunk[-1].id


def _filtered(where: AuditFilter) -> Select[tuple[AuditEvent]]:
    query = select(AuditEvent)
    for column, value in (
        (AuditEvent.username, where.user),
        (AuditEvent.role, where.role),
        (AuditEvent.action, where.action),
        (AuditEvent.event_type, where.event_type),
        (AuditEvent.study_instance_uid, where.study),
        (AuditEvent.patient_id, where.patient_id),
        (AuditEvent.client, where.client),
    ):
        if value:
            query = query.where(column == value)
    if where.site:
        # One of the comma-joined sites; LIKE's own wildcards in the value are escaped.
        literal = where.site.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(
            or_(
                AuditEvent.site == where.site,
                AuditEvent.site.like(f"{literal}{_SITE_SEPARATOR}%", escape="\\"),
                AuditEvent.site.like(f"%{_SITE_SEPARATOR}{literal}", escape="\\"),
                AuditEvent.site.like(f"%{_SITE_SEPARATOR}{literal}{_SITE_SEPARATOR}%", escape="\\"),
            )
        )
    if where.outcome is not None:
        query = query.where(AuditEvent.outcome == where.outcome)
    if where.since is not None:
        query = query.where(AuditEvent.at >= where.since)
    if where.until is not None:
        query = query.where(AuditEvent.at < where.until)
    return query


def _record(row: AuditEvent) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=as_utc(row.at),
        username=row.username,
        role=row.role,
        site=row.site,
        client=row.client,
        action=row.action,
        event_type=row.event_type,
        outcome=row.outcome,
        method=row.method,
        path=row.path,
        status=row.status,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_instance_uid=row.sop_instance_uid,
        patient_id=row.patient_id,
    )
