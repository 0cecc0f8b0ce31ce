"""``GET /api/worklist``: the web viewer's study list.

QIDO-RS (PS3.18 §10.6) answers most of it, but not which site sent a study, which
a radiologist serving many provincial hospitals sorts and filters by; nor whether a
report exists. This route returns one JSON object per study with both, built by
:func:`storage.worklist.worklist` on the same planner QIDO uses. ``report`` is
the status of the study's newest report version (draft, final, amended), or
``null`` when it has none.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel

from api.audit import audited
from api.dicomweb.common import Reader
from storage.query import QueryError
from storage.worklist import WorklistFilter, WorklistRow, worklist

router = APIRouter(prefix="/api", tags=["worklist"], dependencies=[Depends(audited("search"))])

MAX_PAGE = 200

Text = Annotated[str, Query(max_length=64)]
Date = Annotated[str, Query(max_length=10, description="YYYYMMDD or YYYY-MM-DD")]


class WorklistPage(BaseModel):
    items: list[WorklistRow]  # storage's rows, as they are
    offset: int
    limit: int
    more: bool


@router.get("/worklist")
def get_worklist(
    request: Request,
    principal: Reader,
    name: Text = "",
    patient_id: Text = "",
    accession: Text = "",
    date_from: Date = "",
    date_to: Date = "",
    modality: Text = "",
    site: Text = "",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> WorklistPage:
    """Studies newest first; every filter optional. 400 on a malformed one."""
    wanted = WorklistFilter(
        patient_name=name,
        patient_id=patient_id,
        accession_number=accession,
        date_from=date_from.replace("-", ""),
        date_to=date_to.replace("-", ""),
        modality=modality,
        site=site,
    )
    with request.app.state.archive.sessions() as session:
        try:
            rows, more = worklist(session, wanted, limit, offset, principal.scope)
        except QueryError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    return WorklistPage(items=rows, offset=offset, limit=limit, more=more)
