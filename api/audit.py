"""The audit trail: every read of patient data, every change, every refusal leaves a row.

Events are queued and written in batches by one background thread, so a study
load of a thousand frame requests costs a thousand queue puts, not a thousand
commits. The writer gathers for up to :data:`_GATHER_SECONDS` after the first
event of a batch: a viewer scrolling one request at a time otherwise gets one
commit per slice, whose Python work competes for the GIL with the requests.
:meth:`AuditLog.flush` forces the queue out (tests, shutdown). What a request does
not know cheaply (the PatientID of the study it names) is looked up by the writer,
once per batch (:func:`storage.audit.append_events`).

Rows follow IHE ATNA (RFC 3881; DICOM PS3.15 A.5.3): each action maps to an ATNA
event (:data:`EVENT_TYPES`), and the HTTP status to its EventOutcomeIndicator
(:func:`outcome_of`). Refusals are audited too: a failed sign-in (wrong password on
Basic or ``POST /api/auth/token``, an unknown bearer token or share link) as
``User Authentication`` with the username tried, a 403 on an unaudited route as
``Security Alert``, and a refused audited request (403, or the 404 of a study of
another site) as its own event with a failure outcome. Failed sign-ins are
throttled per client address (:class:`_FailureThrottle`) so a password-guessing
flood cannot grow the table as fast as it can send requests.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.audit import append_events, join_sites

log = logging.getLogger(__name__)
_BATCH = 500
_GATHER_SECONDS = 0.25

# The ATNA event of each action: the code meaning of its EventID (DICOM PS3.15 A.5.3,
# codes of PS3.16 CID 400, DCM code in the comment). A handed-over object is
# "Transferred" (as dcm4chee audits WADO and STOW); one only shown, rendered, is
# "Accessed".
EVENT_TYPES = {
    "search": "Query",  # 110112: QIDO-RS, the worklist
    "retrieve": "DICOM Instances Transferred",  # 110104: WADO-RS / WADO-URI objects
    "render": "DICOM Instances Accessed",  # 110103: read as a rendered image
    "store": "DICOM Instances Transferred",  # 110104: STOW-RS
    "download": "Export",  # 110106: the study written out as a ZIP with DICOMDIR
    "report-create": "Procedure Record",  # 110111: the report is the procedure's record
    "report-list": "Procedure Record",
    "report-read": "Procedure Record",
    "report-edit": "Procedure Record",
    "report-finalize": "Procedure Record",
    "report-amend": "Procedure Record",
    "report-pdf": "Procedure Record",
    "report-key-image": "Procedure Record",
    # 110113 with "Object Security Attributes Changed": who may see the study changes.
    "share-create": "Security Alert",
    "share-revoke": "Security Alert",
    "share-list": "Query",
    "share-open": "DICOM Instances Accessed",
    "share-rendered": "DICOM Instances Accessed",
    "share-pdf": "Procedure Record",
    "share-download": "Export",
    "access-grant": "Security Alert",  # 110113, as share-create: a site or user may see it now
    "access-revoke": "Security Alert",
    "access-list": "Query",
    "audit-read": "Audit Log Used",  # 110101: the trail itself was read
    "audit-export": "Audit Log Used",
    "sign-in": "User Authentication",  # 110114: only failures are written
    "denied": "Security Alert",  # 110113 with "Use of Restricted Function"
}

# EventOutcomeIndicator (RFC 3881 5.1.4, PS3.15 A.5.3).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

_FAILED_SIGN_IN = "audit_failed_sign_in"  # request.state: the username that was tried
# A caller's sites, joined once per distinct set rather than on each of its requests.
_site_column = functools.lru_cache(maxsize=4096)(join_sites)


def outcome_of(status: int) -> int:
    """The EventOutcomeIndicator of an HTTP status.

    2xx and 3xx (a 304 is a successful read) are success. A 4xx is a minor failure:
    the request was refused, nothing happened and the caller may try again. A 5xx
    is a serious failure (8): the action was attempted and broke off on our side;
    503 is a major failure (12), "action made unavailable": the service itself was
    down, not just this request.
    """
    if status < 400:
        return SUCCESS
    if status < 500:
        return MINOR_FAILURE
    return MAJOR_FAILURE if status == 503 else SERIOUS_FAILURE


class _FailureThrottle:
    """At most :attr:`limit` failed sign-in rows per client address per window.

    The rest are counted, and one ``Security Alert`` row says how many were left
    out when the window of that address closes (seen at its next failure, or at
    :meth:`AuditLog.flush`, which shutdown calls). So a flood of wrong passwords costs at most
    ``limit + 1`` rows a window per address, and nothing goes unrecorded.
    """

    def __init__(self, limit: int = 20, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        # client -> (window start, rows written, rows left out, last username tried)
        self._clients: dict[str, tuple[float, int, int, str]] = {}

    def admit(self, client: str, username: str) -> tuple[bool, list[tuple[str, str, int]]]:
        """Whether to write this failure, and the (client, username, count) summaries due."""
        now = time.monotonic()
        due: list[tuple[str, str, int]] = []
        with self._lock:
            if len(self._clients) > 10_000:  # many addresses: close every window now
                due += self._drain()
            start, written, left_out, last = self._clients.get(client, (now, 0, 0, username))
            if now - start >= self.window:
                if left_out:
                    due.append((client, last, left_out))
                start, written, left_out = now, 0, 0
            if written < self.limit:
                self._clients[client] = (start, written + 1, left_out, username)
                return True, due
            self._clients[client] = (start, written, left_out + 1, username)
            return False, due

    def drain(self) -> list[tuple[str, str, int]]:
        """The summaries of every window with rows left out; every window is closed."""
        with self._lock:
            return self._drain()

    def _drain(self) -> list[tuple[str, str, int]]:
        due = [(c, last, n) for c, (_, _, n, last) in self._clients.items() if n]
        self._clients.clear()
        return due


class AuditLog:
    """The queue of events and the thread writing them.

    The thread stops at :meth:`close` (the application's shutdown) and starts again
    with the next event: an application started again after a shutdown (a test
    client entering its lifespan once per request) still writes its trail, and a
    flush never waits on a thread that is gone.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.throttle = _FailureThrottle()
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None
        self._writing()

    def record(
        self,
        *,
        username: str,
        client: str,
        action: str,
        method: str,
        path: str,
        status: int,
        role: str = "",
        site: str = "",
        study: str = "",
        series: str = "",
        instance: str = "",
        patient_id: str = "",
        event_type: str = "",
    ) -> None:
        self._queue.put(
            {
                "at": datetime.now(UTC),
                "username": username[:64],
                "role": role[:16],
                "site": site[:64],
                "client": client[:64],
                "action": action[:32],
                "event_type": (event_type or EVENT_TYPES.get(action, ""))[:48],
                "outcome": outcome_of(status),
                "method": method[:8],
                "path": path[:2000],
                "status": status,
                "study_instance_uid": study[:64],
                "series_instance_uid": series[:64],
                "sop_instance_uid": instance[:64],
                "patient_id": patient_id[:64],
            }
        )
        self._writing()

    def record_failed_sign_in(
        self, *, username: str, client: str, method: str, path: str, status: int
    ) -> None:
        """A refused credential, within the per-address throttle."""
        admitted, due = self.throttle.admit(client, username)
        self._summarise(due)
        if admitted:
            self.record(
                username=username,
                client=client,
                action="sign-in",
                method=method,
                path=path,
                status=status,
            )

    def flush(self) -> None:
        """Wait until everything recorded so far is in the database."""
        self._summarise(self.throttle.drain())
        self._queue.put({})  # a marker: when it is consumed, the batch before it is written
        self._writing()
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def _writing(self) -> None:
        """Start the writer thread unless it runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._starting:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _summarise(self, due: list[tuple[str, str, int]]) -> None:
        for client, username, count in due:
            self.record(
                username=username,
                client=client,
                action="sign-in",
                event_type="Security Alert",
                method="",
                path=f"{count} more failed sign-ins from this address in one window",
                status=401,
            )

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
                append_events(session, events)
                session.commit()
        except Exception:  # the trail must not take the server down; say so loudly
            log.exception("could not write %d audit events", len(events))


def audited(action: str) -> Callable[[Request], Awaitable[None]]:
    """Route dependency: this request reads or changes patient data; audit it.

    The event is written by :class:`AuditMiddleware` once the response status is
    known, with the study/series/instance UIDs taken from the path. ``async`` so
    marking costs no trip through the thread pool. An action without an ATNA event
    is a programming error, caught at import time.
    """
    if action not in EVENT_TYPES:
        raise ValueError(f"audit action {action!r} has no ATNA event in EVENT_TYPES")

    async def mark(request: Request) -> None:
        request.state.audit_action = action

    return mark


def note_failed_sign_in(request: Request, username: str) -> None:
    """Mark this request as a refused credential for ``username`` (written with its status)."""
    setattr(request.state, _FAILED_SIGN_IN, username)


def note_refused_credentials(request: Request, scheme: str, credentials: str) -> None:
    """:func:`note_failed_sign_in` for an Authorization header that named nobody valid.

    Basic gives the username tried; a bearer token (or anything else) is identified
    by the start of its SHA-256, never by itself: it may be a live credential, mistyped.
    A username already noted (a wrong password, :func:`note_failed_sign_in`) is kept.
    """
    if getattr(request.state, _FAILED_SIGN_IN, None) is not None:
        return
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
            username = decoded.partition(":")[0] or "(empty)"
        except (binascii.Error, UnicodeDecodeError):
            username = "(malformed basic credentials)"
    else:
        digest = hashlib.sha256(credentials.encode()).hexdigest()[:12]
        username = f"{scheme[:16] or 'unknown'}:{digest}"
    note_failed_sign_in(request, username)


def note_denied(request: Request) -> None:
    """A 403 for the caller's role: audited even on a route that audits nothing else."""
    if not getattr(request.state, "audit_action", None):
        request.state.audit_action = "denied"


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
        principal = state.get("principal")
        failed = state.get(_FAILED_SIGN_IN)
        if principal is None and failed is None:
            return
        client = str((scope.get("client") or ("", 0))[0])
        params = scope.get("path_params") or {}
        path = _logged_path(scope, params)
        if principal is None:
            self.audit_log.record_failed_sign_in(
                username=failed, client=client, method=scope["method"], path=path, status=status
            )
            return
        action = state.get("audit_action")
        if not action:
            return
        self.audit_log.record(
            username=principal.username,
            role=str(principal.role),
            site=_site_column(principal.sites),
            client=client,
            action=action,
            method=scope["method"],
            path=path,
            status=status,
            study=str(params.get("study") or state.get("audit_study", "")),
            series=str(params.get("series", "")),
            instance=str(params.get("instance", "")),
            patient_id=str(params.get("patient_id", "")),
        )


def _logged_path(scope: Scope, params: dict[str, Any]) -> str:
    """Path and query as requested, with a share link's token blanked out.

    The token is a credential: an admin reading the trail must not be able to open
    the link with it.
    """
    path: str = scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    token = params.get("token")
    if isinstance(token, str) and token:
        path = path.replace(token, "<token>")
    return path + (f"?{query}" if query else "")
