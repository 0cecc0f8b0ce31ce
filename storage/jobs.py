"""The forwarding queue: durable jobs in the index database, not in memory.

A job is one study to send to one registered node. Its life:

- ``queued`` (enqueued by ``pacs send``, ``POST /api/jobs`` or a routing rule) ->
  ``running`` when a worker claims it (:func:`claim_next`; the claim is a
  conditional UPDATE checked by its row count, so two workers, threads or
  processes, on SQLite or PostgreSQL, never claim the same job);
- ``done`` when every instance was delivered, ``failed`` when the peer refused
  some (their SOP Instance UIDs in ``failed_uids``, the reason in ``last_error``);
- ``retrying`` when the node could not be reached or the association broke: tried
  again after an exponential backoff, ``dead`` after the last attempt, with the
  reason. ``dead`` and ``failed`` jobs can be retried by hand (:func:`retry`).

Each delivered instance is recorded (:class:`storage.models.ForwardedInstance`)
as soon as the peer confirms it, so a job interrupted by a crash resumes where it
stopped (:func:`requeue_running` at start-up) and sends nothing twice that it
knows was delivered.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from storage.header import is_valid_uid
from storage.models import ForwardedInstance, ForwardJob, RemoteNode, Study
from storage.nodes import get_node
from storage.retrieve import as_utc
from storage.scope import GrantError, Reason, grant

MAX_BACKOFF = timedelta(hours=1)
_CLAIM_TRIES = 5


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"  # finished, but the peer refused some instances
    DEAD = "dead"  # gave up: unreachable after the last attempt, or cannot ever run


WAITING = (JobState.QUEUED, JobState.RETRYING)
RETRYABLE = (JobState.DEAD, JobState.FAILED)


class JobError(ValueError):
    """A job that cannot be enqueued or retried; the message says why."""


@dataclass(frozen=True)
class Job:
    """A forwarding job, detached from the database session."""

    id: int
    study_instance_uid: str
    node: str
    origin: str
    state: JobState
    attempts: int
    next_attempt_at: datetime
    last_error: str
    total: int
    sent: int
    failed: int
    failed_uids: list[str]
    created_at: datetime
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED, JobState.DEAD)


def enqueue(session: Session, study_uid: str, node: str, origin: str = "manual") -> Job:
    """Queue ``study_uid`` for ``node``; JobError when either is unknown."""
    if not is_valid_uid(study_uid):
        raise JobError(f"{study_uid!r} is not a valid Study Instance UID")
    if get_node(session, node) is None:
        raise JobError(f"no node {node!r}: register it with `pacs node add`")
    if session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid)) is None:
        raise JobError(f"study {study_uid} is not in the archive")
    now = datetime.now(UTC)
    row = ForwardJob(
        study_instance_uid=study_uid,
        node=node,
        origin=origin,
        state=JobState.QUEUED.value,
        attempts=0,
        next_attempt_at=now,
        last_error="",
        total=0,
        sent=0,
        failed=0,
        failed_uids="[]",
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return _detached(row)


def get_job(session: Session, job_id: int) -> Job | None:
    row = session.get(ForwardJob, job_id, populate_existing=True)
    return _detached(row) if row else None


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    node: str | None = None,
    study: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    """Jobs, newest first, optionally only those in ``state``, to ``node``, of ``study``."""
    statement = select(ForwardJob).order_by(ForwardJob.id.desc()).limit(limit).offset(offset)
    if state is not None:
        statement = statement.where(ForwardJob.state == state.value)
    if node is not None:
        statement = statement.where(ForwardJob.node == node)
    if study is not None:
        statement = statement.where(ForwardJob.study_instance_uid == study)
    return [_detached(row) for row in session.scalars(statement)]


def has_waiting_job(session: Session, study_uid: str, node: str) -> bool:
    """A job for this study and node that has not started yet: it will send whatever
    the study holds when it runs, so another one would only repeat it."""
    statement = select(ForwardJob.id).where(
        ForwardJob.study_instance_uid == study_uid,
        ForwardJob.node == node,
        ForwardJob.state.in_([s.value for s in WAITING]),
    )
    return session.scalar(statement.limit(1)) is not None


def claim_next(session: Session) -> Job | None:
    """Take the next due job (oldest due first) and mark it running; commits.

    The claim is ``UPDATE ... WHERE id = :id AND state = :seen``: when another worker
    took the job in between, no row changes and the next candidate is tried.
    """
    for _ in range(_CLAIM_TRIES):
        now = datetime.now(UTC)
        candidate = session.execute(
            select(ForwardJob.id, ForwardJob.state)
            .where(
                ForwardJob.state.in_([s.value for s in WAITING]),
                ForwardJob.next_attempt_at <= now,
            )
            .order_by(ForwardJob.next_attempt_at, ForwardJob.id)
            .limit(1)
        ).first()
        if candidate is None:
            session.rollback()
            return None
        claimed = session.execute(
            update(ForwardJob)
            .where(ForwardJob.id == candidate.id, ForwardJob.state == candidate.state)
            .values(state=JobState.RUNNING.value, attempts=ForwardJob.attempts + 1, updated_at=now)
        )
        session.commit()
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            return get_job(session, candidate.id)
    return None


def sent_uids(session: Session, job_id: int) -> set[str]:
    """The SOP Instance UIDs this job has already delivered."""
    statement = select(ForwardedInstance.sop_instance_uid).where(ForwardedInstance.job_id == job_id)
    return set(session.scalars(statement))


def start_run(session: Session, job_id: int, total: int) -> None:
    """Record how many instances the study holds as this run starts."""
    _set(session, job_id, total=total)


def record_sent(session: Session, job_id: int, sop_instance_uid: str) -> None:
    """The peer confirmed ``sop_instance_uid``: remember it (the caller commits)."""
    session.execute(
        insert(ForwardedInstance).values(job_id=job_id, sop_instance_uid=sop_instance_uid)
    )
    session.execute(
        update(ForwardJob)
        .where(ForwardJob.id == job_id)
        .values(sent=ForwardJob.sent + 1, updated_at=datetime.now(UTC))
    )


def finish(session: Session, job_id: int, refused: dict[str, str]) -> Job:
    """End a run that reached every instance: ``done``, or ``failed`` with the
    instances the peer refused (``{uid: reason}``) listed; commits.

    The study now belongs to the destination node's site too (storage.scope): that
    hospital's radiologists see it here as well as in their own archive.
    """
    _grant_to_destination(session, job_id)
    if refused:
        reasons = sorted(set(refused.values()))
        error = f"{len(refused)} instance(s) refused by the destination: " + "; ".join(reasons)
        _set(
            session,
            job_id,
            state=JobState.FAILED,
            failed=len(refused),
            failed_uids=json.dumps(sorted(refused)),
            last_error=error[:4000],
        )
    else:
        _set(session, job_id, state=JobState.DONE, failed=0, failed_uids="[]", last_error="")
    session.commit()
    return _must(session, job_id)


def _grant_to_destination(session: Session, job_id: int) -> None:
    row = session.execute(
        select(ForwardJob.study_instance_uid, RemoteNode.site)
        .join(RemoteNode, RemoteNode.name == ForwardJob.node)
        .where(ForwardJob.id == job_id)
    ).first()
    if row is not None and row.site:
        with contextlib.suppress(GrantError):  # the study was deleted meanwhile
            grant(session, row.study_instance_uid, Reason.FORWARDED, site=row.site)


def fail_attempt(
    session: Session, job_id: int, reason: str, *, retry_after: float, max_attempts: int
) -> Job:
    """This attempt could not reach the node or lost it: retry after
    ``retry_after * 2**(attempts-1)`` seconds (at most an hour), or give up (``dead``)
    when ``max_attempts`` are spent; commits."""
    job = _must(session, job_id)
    if job.attempts >= max_attempts:
        return kill(session, job_id, f"gave up after {job.attempts} attempts: {reason}")
    delay = min(timedelta(seconds=retry_after * 2 ** (job.attempts - 1)), MAX_BACKOFF)
    _set(
        session,
        job_id,
        state=JobState.RETRYING,
        next_attempt_at=datetime.now(UTC) + delay,
        last_error=reason[:4000],
    )
    session.commit()
    return _must(session, job_id)


def kill(session: Session, job_id: int, reason: str) -> Job:
    """Dead-letter the job with ``reason`` (it can never run as it is); commits."""
    _set(session, job_id, state=JobState.DEAD, last_error=reason[:4000])
    session.commit()
    return _must(session, job_id)


def release(session: Session, job_id: int) -> None:
    """Put a running job back in the queue without spending an attempt (shutdown)."""
    _set(session, job_id, state=JobState.QUEUED, attempts=ForwardJob.attempts - 1)
    session.commit()


def retry(session: Session, job_id: int) -> Job:
    """Queue a dead or failed job again with fresh attempts; what it already delivered
    stays delivered, so only the rest is sent. JobError for other states."""
    job = get_job(session, job_id)
    if job is None:
        raise JobError(f"no job {job_id}")
    if job.state not in RETRYABLE:
        raise JobError(f"job {job_id} is {job.state}: only dead or failed jobs are retried")
    _set(
        session,
        job_id,
        state=JobState.QUEUED,
        attempts=0,
        next_attempt_at=datetime.now(UTC),
        failed=0,
        failed_uids="[]",
        last_error="",
    )
    session.commit()
    return _must(session, job_id)


def requeue_running(session: Session) -> int:
    """At start-up: jobs left ``running`` by a process that died go back to the queue
    (their progress kept); returns how many. Commits."""
    result = session.execute(
        update(ForwardJob)
        .where(ForwardJob.state == JobState.RUNNING.value)
        .values(state=JobState.QUEUED.value, updated_at=datetime.now(UTC))
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def depth_by_state(session: Session) -> dict[JobState, int]:
    """How many jobs are in each state (the queue depth metrics)."""
    counts = dict.fromkeys(JobState, 0)
    statement = select(ForwardJob.state, func.count()).group_by(ForwardJob.state)
    for state, count in session.execute(statement):
        counts[JobState(state)] = int(count)
    return counts


def _set(session: Session, job_id: int, **values: object) -> None:
    values = {k: v.value if isinstance(v, JobState) else v for k, v in values.items()}
    session.execute(
        update(ForwardJob)
        .where(ForwardJob.id == job_id)
        .values(**values, updated_at=datetime.now(UTC))
    )


def _must(session: Session, job_id: int) -> Job:
    job = get_job(session, job_id)
    if job is None:
        raise JobError(f"no job {job_id}")
    return job


def _detached(row: ForwardJob) -> Job:
    return Job(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        node=row.node,
        origin=row.origin,
        state=JobState(row.state),
        attempts=row.attempts,
        next_attempt_at=as_utc(row.next_attempt_at),
        last_error=row.last_error,
        total=row.total,
        sent=row.sent,
        failed=row.failed,
        failed_uids=list(json.loads(row.failed_uids or "[]")),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )
