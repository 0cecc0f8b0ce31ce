"""``/api/jobs``: the forwarding queue over HTTP (admin only).

The same queue as ``pacs send`` and ``pacs jobs`` (:mod:`storage.jobs`): list jobs
(filtered by state, node or study), read one with the instances the destination
refused, queue a study for a node, and retry a dead or failed job.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from api.auth import Principal, require_role
from api.params import Offset, RowId
from storage.jobs import Job, JobError, JobState, enqueue, get_job, list_jobs, retry
from storage.users import Role

router = APIRouter(prefix="/api/jobs", tags=["forwarding"])
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]


class JobIn(BaseModel):
    study_instance_uid: str = Field(min_length=1, max_length=64)
    node: str = Field(min_length=1, max_length=64)


@router.get("")
def jobs(
    request: Request,
    _: Admin,
    state: JobState | None = None,
    node: str | None = None,
    study: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> list[Job]:
    """Jobs, newest first."""
    with request.app.state.archive.sessions() as session:
        found = list_jobs(session, state=state, node=node, study=study, limit=limit, offset=offset)
    return found


@router.post("", status_code=status.HTTP_201_CREATED)
def send(request: Request, body: JobIn, _: Admin) -> Job:
    """Queue a study for a node (what ``pacs send STUDY_UID --to NODE`` does)."""
    with request.app.state.archive.sessions() as session:
        try:
            job = enqueue(session, body.study_instance_uid, body.node)
        except JobError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        session.commit()
    return job


@router.get("/{job_id}")
def job(request: Request, job_id: RowId, _: Admin) -> Job:
    with request.app.state.archive.sessions() as session:
        found = get_job(session, job_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return found


@router.post("/{job_id}/retry")
def retry_job(request: Request, job_id: RowId, _: Admin) -> Job:
    """Queue a dead or failed job again; what it already delivered is not resent."""
    with request.app.state.archive.sessions() as session:
        if get_job(session, job_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
        try:
            return retry(session, job_id)
        except JobError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
