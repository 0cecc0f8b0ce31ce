"""The audit trail: every read of patient data over HTTP leaves a row.

Events are queued and written in batches by one background thread, so a study
load of a thousand frame requests costs a thousand queue puts, not a thousand
commits. The writer gathers for up to :data:`_GATHER_SECONDS` after the first
event of a batch: a viewer scrolling one request at a time otherwise gets one
commit per slice, whose Python work competes for the GIL with the requests.
:meth:`AuditLog.flush` forces the queue out (tests, shutdown).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.models import AuditEvent

log = logging.getLogger(__name__)
_BATCH = 500
_GATHER_SECONDS = 0.25


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        username: str,
        client: str,
        action: str,
        method: str,
        path: str,
        status: int,
        study: str = "",
        series: str = "",
        instance: str = "",
    ) -> None:
        self._queue.put(
            {
                "at": datetime.now(UTC),
                "username": username[:64],
                "client": client[:64],
                "action": action[:32],
                "method": method[:8],
                "path": path[:2000],
                "status": status,
                "study_instance_uid": study[:64],
                "series_instance_uid": series[:64],
                "sop_instance_uid": instance[:64],
            }
        )

    def flush(self) -> None:
        """Wait until everything recorded so far is in the database."""
        self._queue.put({})  # a marker: when it is consumed, the batch before it is written
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            batch = [first]
            if first:  # a flush marker ({}) goes out at once
                batch += self._gather()
            self._write([event for event in batch if event])
            for _ in batch:
                self._queue.task_done()

    def _gather(self) -> list[dict[str, Any]]:
        """More events, until the batch is full, the window closes or a marker comes."""
        gathered: list[dict[str, Any]] = []
        deadline = time.monotonic() + _GATHER_SECONDS
        while len(gathered) < _BATCH:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:  # close: hand it back to the main loop, after this batch
                self._queue.task_done()
                self._queue.put(None)
                break
            gathered.append(item)
            if not item:  # flush: write what we have now
                break
        return gathered

    def _write(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        try:
            with self._sessions() as session:
                session.execute(insert(AuditEvent), events)
                session.commit()
        except Exception:  # the trail must not take the server down; say so loudly
            log.exception("could not write %d audit events", len(events))


def audited(action: str) -> Callable[[Request], Awaitable[None]]:
    """Route dependency: this request reads or changes patient data; audit it.

    The event is written by :class:`AuditMiddleware` once the response status is
    known, with the study/series/instance UIDs taken from the path. ``async`` so
    marking costs no trip through the thread pool.
    """

    async def mark(request: Request) -> None:
        request.state.audit_action = action

    return mark


class AuditMiddleware:
    """ASGI middleware writing one audit event per audited request."""

    def __init__(self, app: ASGIApp, audit_log: AuditLog) -> None:
        self.app = app
        self.audit_log = audit_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # shared with the route's request.state
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self._record(scope, status["code"])

    def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state") or {}
        action = state.get("audit_action")
        principal = state.get("principal")
        if not action or principal is None:
            return
        params = scope.get("path_params") or {}
        query = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client") or ("", 0)
        self.audit_log.record(
            username=principal.username,
            client=str(client[0]),
            action=action,
            method=scope["method"],
            path=scope["path"] + (f"?{query}" if query else ""),
            status=status,
            study=str(params.get("study") or state.get("audit_study", "")),
            series=str(params.get("series", "")),
            instance=str(params.get("instance", "")),
        )
