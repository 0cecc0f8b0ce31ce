"""Forwarding: the workers that send queued studies to other nodes with C-STORE.

``pacs serve`` starts a :class:`Forwarder` beside the DICOM listener. Its worker
threads claim due jobs from the durable queue (:mod:`storage.jobs`) and send the
study's instances over one association with :mod:`pacs.scu` (stored bytes as they
are, re-encoded only when the peer needs it; PS3.4 Annex B). Per instance:

- Success or a Warning status (PS3.4 B.2.3) -> recorded as delivered at once, so a
  job resumed after a crash does not send it again;
- a Failure status from the peer, or no presentation context for its SOP class /
  syntax (PS3.8 9.3.2.2) -> the peer refuses it: listed in the job, which ends
  ``failed`` with the reasons (resending would be refused again);
- no response (association aborted, peer gone) -> the attempt stops; like an
  association that cannot be made at all, the job is retried with exponential
  backoff (``PACS_FORWARD_RETRY_SECONDS``) and dead after
  ``PACS_FORWARD_MAX_ATTEMPTS``.

A router thread applies the routing rules (:mod:`storage.routing`) to studies that
fell quiet (``PACS_ROUTE_QUIET_SECONDS``) and refreshes the queue-depth gauges.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from prometheus_client import Counter, Gauge
from sqlalchemy.orm import Session

from pacs.scu import SendError, send_instance, store_association, tls_context
from pacs.settings import Settings
from storage import Archive
from storage.jobs import (
    Job,
    JobState,
    claim_next,
    depth_by_state,
    fail_attempt,
    finish,
    kill,
    record_sent,
    release,
    requeue_running,
    sent_uids,
    start_run,
)
from storage.nodes import Node, get_node
from storage.retrieve import StoredInstance, find_instances
from storage.routing import route_quiet_studies

log = logging.getLogger(__name__)

QUEUE_DEPTH = Gauge("pacs_forward_jobs", "Forwarding jobs in each state", ["state"])
FORWARDED = Counter(
    "pacs_forwarded_instances_total", "Instances sent by forwarding jobs", ["outcome"]
)
RETRIES = Counter("pacs_forward_retries_total", "Forwarding attempts that will be retried")
DEAD = Counter("pacs_forward_dead_total", "Forwarding jobs given up (dead-lettered)")
POLL_SECONDS = 0.5  # how long an idle worker waits before looking at the queue again
ROUTE_SECONDS = 5.0  # the longest the router waits between two passes


class Interrupted(Exception):
    """The attempt stopped before every instance was tried; the job is retried."""


class Forwarder:
    """Forwarding workers and the router, as daemon threads of ``pacs serve``."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.settings = settings
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        with self.archive.sessions() as session:
            if resumed := requeue_running(session):
                log.warning("resuming %d forwarding job(s) interrupted by a stop", resumed)
        workers = [
            threading.Thread(target=self._work, name=f"forward-{n}", daemon=True)
            for n in range(self.settings.forward_workers)
        ]
        router = threading.Thread(target=self._route, name="router", daemon=True)
        self._threads = [*workers, router]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop after the instance being sent; unfinished jobs go back to the queue."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def run_once(self) -> Job | None:
        """Claim one due job and run it; the job as it ended, or None when none was due."""
        with self.archive.sessions() as session:
            job = claim_next(session)
        if job is None:
            return None
        try:
            return self.run(job)
        except Exception as exc:  # never leave a job running with nobody running it
            log.exception("job %d: unexpected error", job.id)
            with self.archive.sessions() as session:
                return self._retry_later(session, job, f"internal error: {exc}")

    def run(self, job: Job) -> Job:
        """One attempt at ``job`` (already claimed): send what it has not delivered yet."""
        with self.archive.sessions() as session:
            node = get_node(session, job.node)
            if node is None:
                return kill(session, job.id, f"node {job.node!r} is no longer registered")
            instances = find_instances(session, job.study_instance_uid)
            if not instances:
                return kill(session, job.id, f"study {job.study_instance_uid} is not stored here")
            done = sent_uids(session, job.id)
            start_run(session, job.id, len(instances))
            session.commit()
            todo = [item for item in instances if item.sop_instance_uid not in done]
            if done:
                log.info("job %d: %d of %d instances already sent", job.id, len(done),
                         len(instances))  # fmt: skip
            try:
                refused = self._send(session, job, node, todo) if todo else {}
            except (SendError, Interrupted) as exc:
                return self._retry_later(session, job, str(exc))
            if refused is None:
                release(session, job.id)
                return job
            ended = finish(session, job.id, refused)
        log.info("job %d (%s -> %s): %s, %d sent, %d refused", ended.id, ended.study_instance_uid,
                 ended.node, ended.state, ended.sent, ended.failed)  # fmt: skip
        return ended

    def _send(
        self, session: Session, job: Job, node: Node, todo: list[StoredInstance]
    ) -> dict[str, str] | None:
        """Send ``todo`` over one association; the refused instances ``{uid: reason}``,
        or None when stopping interrupted the run."""
        refused: dict[str, str] = {}
        tls = tls_context(self.settings) if node.tls else None
        with store_association(self.settings.ae_title, node, todo, tls) as link:
            for number, item in enumerate(todo, 1):
                if self._stop.is_set():
                    return None
                result = send_instance(link, self.archive, item, msg_id=number % 65535 + 1)
                if result.success or result.warning:
                    record_sent(session, job.id, item.sop_instance_uid)
                    session.commit()
                    FORWARDED.labels("sent").inc()
                elif result.status is None:
                    raise Interrupted(f"{node.name}: {result.comment}")
                else:
                    reason = f"0x{result.status:04X} {result.comment}".strip()
                    refused[item.sop_instance_uid] = reason
                    FORWARDED.labels("refused").inc()
                    log.warning("job %d: %s refused %s: %s", job.id, job.node,
                                item.sop_instance_uid, reason)  # fmt: skip
        return refused

    def _retry_later(self, session: Session, job: Job, reason: str) -> Job:
        ended = fail_attempt(
            session,
            job.id,
            reason,
            retry_after=self.settings.forward_retry_seconds,
            max_attempts=self.settings.forward_max_attempts,
        )
        if ended.state is JobState.DEAD:
            DEAD.inc()
            log.error("job %d dead: %s", job.id, ended.last_error)
        else:
            RETRIES.inc()
            log.warning("job %d: attempt %d failed (%s); next at %s", job.id, ended.attempts,
                        reason, ended.next_attempt_at.isoformat())  # fmt: skip
        return ended

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # a worker must outlive a database hiccup
                log.exception("forwarding worker error")
                ran = None
            if ran is None:
                self._stop.wait(POLL_SECONDS)

    def _route(self) -> None:
        quiet = timedelta(seconds=self.settings.route_quiet_seconds)
        interval = min(max(self.settings.route_quiet_seconds / 4, POLL_SECONDS), ROUTE_SECONDS)
        while not self._stop.is_set():
            try:
                with self.archive.sessions() as session:
                    route_quiet_studies(session, quiet)
                    for state, count in depth_by_state(session).items():
                        QUEUE_DEPTH.labels(state.value).set(count)
            except Exception:
                log.exception("routing pass failed")
            self._stop.wait(interval)
