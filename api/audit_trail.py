"""``/api/audit``: the audit trail for admins, read by page or exported as JSON lines.

``GET /api/audit`` answers one page, newest first, with the cursor of the next
(``before``: ids only grow, so a page boundary stays put while events are added);
``GET /api/audit/export`` streams every matching event as JSON lines
(``application/x-ndjson``) in constant memory. Both take the same filters, and both
are audited themselves, as ATNA ``Audit Log Used`` (DICOM PS3.15 A.5.3, DCM 110101).
There is no route that changes or removes an event (:mod:`storage.audit`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.audit import audited
from api.auth import Principal, require_role
from api.params import ROW_ID_MAX
from storage.audit import MAX_PAGE, AuditFilter, AuditRecord, audit_page, export_events
from storage.users import Role

router = APIRouter(prefix="/api/audit", tags=["audit"])
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
Text = Annotated[str, Query(max_length=64)]


class AuditPage(BaseModel):
    events: list[AuditRecord]
    next_before: int | None  # pass as ``before`` for the next (older) page; None: no more


def audit_filter(
    user: Text = "",
    role: Role | None = None,
    site: Text = "",
    action: Annotated[str, Query(max_length=32)] = "",
    event_type: Annotated[str, Query(max_length=48, description="ATNA event")] = "",
    study: Text = "",
    patient_id: Text = "",
    outcome: Annotated[
        int | None, Query(ge=0, le=12, description="ATNA EventOutcomeIndicator: 0, 4, 8, 12")
    ] = None,
    client: Annotated[str, Query(max_length=64, description="source IP address")] = "",
    since: Annotated[datetime | None, Query(alias="from", description="inclusive")] = None,
    until: Annotated[datetime | None, Query(alias="to", description="exclusive")] = None,
) -> AuditFilter:
    """The filters both routes take (times without a zone are UTC)."""
    return AuditFilter(
        user=user,
        role=role.value if role else "",
        site=site,
        action=action,
        event_type=event_type,
        study=study,
        patient_id=patient_id,
        outcome=outcome,
        client=client,
        since=_utc(since),
        until=_utc(until),
    )


Filter = Annotated[AuditFilter, Depends(audit_filter)]


@router.get("", dependencies=[Depends(audited("audit-read"))])
def events(
    request: Request,
    where: Filter,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=ROW_ID_MAX, description="id cursor from next_before")
    ] = None,
) -> AuditPage:
    """One page of audit events, newest first."""
    with request.app.state.archive.sessions() as session:
        found = audit_page(session, where, limit, before)
    return AuditPage(events=found, next_before=found[-1].id if len(found) == limit else None)


@router.get(
    "/export",
    dependencies=[Depends(audited("audit-export"))],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def export(request: Request, where: Filter, _: Admin) -> StreamingResponse:
    """Every matching event as JSON lines, newest first, streamed."""
    lines = _json_lines(export_events(request.app.state.archive.sessions, where))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.jsonl"'},
    )


def _json_lines(records: Iterator[AuditRecord]) -> Iterator[bytes]:
    for record in records:
        row = asdict(record)
        row["at"] = record.at.isoformat()
        yield (json.dumps(row, ensure_ascii=False) + "\n").encode()


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
