"""C-MOVE and C-GET SCP: Patient Root and Study Root retrieve (PS3.4 C.4.2, C.4.3).

What to send is decided by the EVT_C_MOVE / EVT_C_GET handler (:func:`plan_retrieve`):
the caller's rights, the move destination (registered nodes only: an unknown one
gets 0xA801 with an ErrorComment naming it, and the calling AE and destination are
logged), and the unique keys of the identifier matched through the same planner
as C-FIND. How it is sent is :class:`RetrieveServiceClass`, which replaces
pynetdicom's sub-operation loop so that each file goes out as stored (streamed from
the blob store, re-encoded only when the peer needs it: :mod:`pacs.scu`) and every
response carries what the standard asks:

- pending responses with the remaining, completed, failed and warning counts
  (PS3.4 C.4.2.1.4 / C.4.3.1.4), after the first sub-operation and then at most
  ten a second;
- a final Success, Warning 0xB000 (some failed or warned) or Failure 0xA702 (all
  failed), with the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2);
- C-CANCEL (PS3.7 9.3.2.3 / 9.3.3.3) checked between sub-operations: status 0xFE00.

C-MOVE opens a new association to the destination; C-GET stores over the
requestor's own association, on the storage contexts it proposed with the SCP
role (PS3.4 C.4.3, PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom import association as pynetdicom_association
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass, ServiceClass
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    uid_to_service_class,
)

from pacs.access import NOT_AUTHORIZED, Access, Right
from pacs.charset import character_sets
from pacs.find import IDENTIFIER_MISMATCH, identifier_text
from pacs.scu import (
    SendError,
    SendResult,
    send_instance,
    send_on_association,
    store_association,
    tls_context,
)
from pacs.settings import Settings
from pacs.status import error_comment
from pacs.store_link import StoreLink
from storage import Archive
from storage.nodes import Node, node_for_ae
from storage.query import Level, QueryError
from storage.retrieve import StoredInstance, matching_instances

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCELLED = 0xFE00
WARNING = 0xB000  # sub-operations complete, one or more failures or warnings
DESTINATION_UNKNOWN = 0xA801
UNABLE_TO_PERFORM = 0xA702  # all sub-operations failed, or none could be started
PROCESSING_FAILURE = 0xC000
MAX_SUBOPERATIONS = 65535  # the counts are US (PS3.7 Table 9.3-4)
PENDING_INTERVAL = 0.1  # seconds between pending responses
GET_LOOP_DELAY = 0.0001  # seconds; pynetdicom's default is 0.001

MOVE_MODELS: dict[str, tuple[Level, ...]] = {
    PatientRootQueryRetrieveInformationModelMove: tuple(Level),
    StudyRootQueryRetrieveInformationModelMove: (Level.STUDY, Level.SERIES, Level.IMAGE),
}
GET_MODELS: dict[str, tuple[Level, ...]] = {
    PatientRootQueryRetrieveInformationModelGet: tuple(Level),
    StudyRootQueryRetrieveInformationModelGet: (Level.STUDY, Level.SERIES, Level.IMAGE),
}
# The unique key of each level (PS3.4 C.6.1.1 and C.6.2.1), and the keys a
# retrieve identifier may carry (C.4.2.2.1: unique keys only; the issuer
# qualifies PatientID).
UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_KEY_LEVEL = {keyword: level for level, keyword in UNIQUE_KEY.items()}
_KEY_LEVEL["IssuerOfPatientID"] = Level.PATIENT
_DEPTH = {level: depth for depth, level in enumerate(Level)}


@dataclass
class Plan:
    """What a retrieve request asks for: the instances and, for C-MOVE, where to."""

    archive: Archive
    settings: Settings
    instances: list[StoredInstance] = field(default_factory=list)
    destination: Node | None = None
    failure: tuple[int, str] | None = None  # status, ErrorComment


def plan_retrieve(event: evt.Event, archive: Archive, access: Access, settings: Settings) -> Plan:
    """EVT_C_MOVE / EVT_C_GET handler: check the request and find the instances."""
    request = event.request
    calling = str(event.assoc.requestor.ae_title).strip()
    plan = Plan(archive, settings)
    refused = access.refusal(event, Right.RETRIEVE)
    if refused is not None:
        plan.failure = (NOT_AUTHORIZED, refused)
        return plan
    destination = None
    if isinstance(request, C_MOVE):
        wanted = str(request.MoveDestination or "").strip()
        with archive.sessions() as session:
            destination = node_for_ae(session, wanted)
        if destination is None:
            log.warning("C-MOVE from %s to unknown destination %r refused", calling, wanted)
            plan.failure = (DESTINATION_UNKNOWN, f"move destination {wanted} is not a known node")
            return plan
        log.info("C-MOVE from %s to %s (%s)", calling, wanted, destination.name)
    models = MOVE_MODELS if isinstance(request, C_MOVE) else GET_MODELS
    try:
        match = retrieve_keys(event.identifier, models[str(request.AffectedSOPClassUID)])
        with archive.sessions() as session:
            plan.instances = matching_instances(session, match)
    except QueryError as exc:
        plan.failure = (IDENTIFIER_MISMATCH, str(exc))
    plan.destination = destination
    return plan


def retrieve_keys(identifier: Dataset, levels: tuple[Level, ...]) -> dict[str, str]:
    """The match keys of a retrieve identifier; QueryError when it is not one."""
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if raw_level not in {level.value for level in levels}:
        raise QueryError(f"QueryRetrieveLevel {raw_level!r} is not valid for this model")
    level = Level(raw_level)
    charsets = character_sets(identifier)
    match: dict[str, str] = {}
    for keyword, key_level in _KEY_LEVEL.items():
        if keyword in identifier and _DEPTH[key_level] <= _DEPTH[level]:
            value = identifier_text(identifier, identifier[keyword].tag, charsets)
            if value:
                match[keyword] = value
    unique = UNIQUE_KEY[level]
    if unique not in match:
        raise QueryError(f"a {level.value} retrieve needs {unique}")
    if any(c in match.get("PatientID", "") for c in "*?"):
        raise QueryError("PatientID is a unique key: no wildcards")
    return match


class RetrieveServiceClass(QueryRetrieveServiceClass):
    """pynetdicom's Query/Retrieve service with our C-MOVE and C-GET sub-operations."""

    def _move_scp(self, req: C_MOVE, context: PresentationContext) -> None:
        _Retrieval(self, req, context).run()

    def _get_scp(self, req: C_GET, context: PresentationContext) -> None:
        _Retrieval(self, req, context).run()


def install() -> None:
    """Route Query/Retrieve requests to :class:`RetrieveServiceClass` (idempotent)."""

    def service_class_for(uid: str) -> type[ServiceClass]:
        found = uid_to_service_class(uid)
        return RetrieveServiceClass if found is QueryRetrieveServiceClass else found

    pynetdicom_association.uid_to_service_class = service_class_for  # type: ignore[assignment]


class _Retrieval:
    """One C-MOVE or C-GET request being served: its sub-operations and responses."""

    def __init__(
        self, service: RetrieveServiceClass, req: C_MOVE | C_GET, context: PresentationContext
    ) -> None:
        self.service = service
        self.req = req
        self.cx_id = int(context.context_id or 0)
        self.syntax = context.transfer_syntax[0]
        self.move = isinstance(req, C_MOVE)
        self.completed = self.failed = self.warning = 0
        self.failed_uids: list[str] = []
        self.context = context

    @property
    def assoc(self) -> Association:
        return self.service.assoc

    def run(self) -> None:
        event = evt.EVT_C_MOVE if self.move else evt.EVT_C_GET
        try:
            plan = evt.trigger(
                self.assoc,
                event,
                {
                    "request": self.req,
                    "context": self.context.as_tuple,
                    "_is_cancelled": self.service.is_cancelled,
                },
            )
        except Exception as exc:
            log.exception("retrieve request failed")
            self._final(PROCESSING_FAILURE, f"cannot process the request: {exc}")
            return
        if not isinstance(plan, Plan):
            self._final(PROCESSING_FAILURE, "no retrieve handler")
            return
        if plan.failure is not None:
            self._final(*plan.failure)
            return
        if len(plan.instances) > MAX_SUBOPERATIONS:
            self._final(UNABLE_TO_PERFORM, "more than 65535 instances: retrieve by series")
            return
        if not plan.instances:
            self._final(SUCCESS)
            return
        if plan.destination is None:
            # pynetdicom's DUL thread sleeps 1 ms whenever it finds nothing to do, so
            # every C-STORE response of a C-GET would wait for it; poll faster meanwhile.
            dul = self.assoc.dul
            delay, dul._run_loop_delay = dul._run_loop_delay, GET_LOOP_DELAY
            try:
                self._send_all(plan.archive, plan.instances, None)
            finally:
                dul._run_loop_delay = delay
            return
        try:
            tls = tls_context(plan.settings) if plan.destination.tls else None
            with store_association(
                plan.settings.ae_title, plan.destination, plan.instances, tls
            ) as link:
                self._send_all(plan.archive, plan.instances, link)
        except (SendError, OSError) as exc:  # OSError: our TLS files (ssl.SSLError too)
            log.warning("C-MOVE: %s", exc)
            self.failed = len(plan.instances)
            self.failed_uids = [item.sop_instance_uid for item in plan.instances]
            self._final(UNABLE_TO_PERFORM, str(exc))

    def _send_all(
        self, archive: Archive, instances: list[StoredInstance], link: StoreLink | None
    ) -> None:
        """Run the sub-operations: over ``link`` (C-MOVE) or the requestor's own
        association (C-GET)."""
        calling = str(self.assoc.requestor.ae_title).strip()
        request_id = int(self.req.MessageID)
        total = len(instances)
        last_pending = 0.0
        for index, item in enumerate(instances):
            if self.service.is_cancelled(request_id):
                self._final(CANCELLED, remaining=total - index)
                return
            if not self.assoc.is_established:
                return  # the requestor went away: nobody to answer
            msg_id = (request_id + index + 1) % 65536
            if link is None:
                result = send_on_association(self.assoc, archive, item, msg_id=msg_id)
            else:
                originator = (calling, request_id)
                result = send_instance(link, archive, item, msg_id=msg_id, originator=originator)
            self._count(result)
            # Pending responses are optional (PS3.4 C.4.2.1.4): a few a second keep a
            # progress bar moving without spending a command set on every instance.
            now = time.monotonic()
            if now - last_pending >= PENDING_INTERVAL or index + 1 == total:
                self._respond(PENDING, remaining=total - index - 1)
                last_pending = now
        if self.failed == total:
            self._final(UNABLE_TO_PERFORM, "no instance could be sent")
        elif self.failed or self.warning:
            self._final(WARNING)
        else:
            self._final(SUCCESS)

    def _count(self, result: SendResult) -> None:
        if result.success:
            self.completed += 1
        elif result.warning:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(result.sop_instance_uid)
            log.warning(
                "sub-operation for %s failed: 0x%04X %s",
                result.sop_instance_uid,
                result.status if result.status is not None else 0xFFFF,
                result.comment,
            )

    def _respond(self, status: int, comment: str = "", remaining: int | None = None) -> None:
        rsp = C_MOVE() if self.move else C_GET()
        rsp.MessageIDBeingRespondedTo = self.req.MessageID
        rsp.AffectedSOPClassUID = self.req.AffectedSOPClassUID
        rsp.Status = status
        if comment:
            rsp.ErrorComment = error_comment(comment)
        if remaining is not None:
            rsp.NumberOfRemainingSuboperations = remaining
        rsp.NumberOfCompletedSuboperations = self.completed
        rsp.NumberOfFailedSuboperations = self.failed
        rsp.NumberOfWarningSuboperations = self.warning
        if status in (CANCELLED, WARNING, UNABLE_TO_PERFORM) and self.failed_uids:
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = self.failed_uids
            encoded = encode(
                identifier,
                self.syntax.is_implicit_VR,
                self.syntax.is_little_endian,
                self.syntax.is_deflated,
            )
            rsp.Identifier = BytesIO(encoded or b"")
        self.assoc.dimse.send_msg(rsp, self.cx_id)

    def _final(self, status: int, comment: str = "", remaining: int | None = None) -> None:
        """The last response: counts, but no remaining count unless cancelled (C.4.2.1.4)."""
        if self.assoc.is_established:
            self._respond(status, comment, remaining if status == CANCELLED else None)
