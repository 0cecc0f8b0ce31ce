"""A lean Storage SCP for associations that only store and echo.

pynetdicom passes every PDU through two threads and polling queues (the DUL
reader, then the association's reactor); a C-STORE costs ~4 ms there before our
handler runs, and a do-nothing pynetdicom SCP tops out near the rate Orthanc
ingests at (``bench/cstore_receive.py`` measures both). Scanners pushing studies
are the one hot path, so an association that proposes nothing but Verification
and Storage is served here by one thread with a blocking socket: P-DATA-TF PDUs
are parsed in place and data-set fragments go from the socket straight into the
staging file. Everything else (query, retrieve, role selection) goes to
pynetdicom (:mod:`pacs.listener` decides).

Association negotiation reuses pynetdicom's PDU classes (PS3.8 §9.3.2-§9.3.4);
only the P-DATA-TF (PS3.8 §9.3.5) and DIMSE command set (PS3.7 §6.3, §9.3.1,
§9.3.5) handling is written here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from pacs import status
from pacs.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    Command,
    CommandError,
    encode_response,
    file_meta_prefix,
    parse_command,
)

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 Annex A.2.1
_ACCEPTED_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)
_RECV_CHUNK = 1 << 20
# What pynetdicom answers when a C-STORE handler raises (a "cannot understand" code,
# PS3.4 B.2.3), so both SCPs answer a bug alike.
UNEXPECTED_FAILURE = 0xC211

# PDU types, PS3.8 §9.3.1
_ASSOCIATE_RQ, _P_DATA, _RELEASE_RQ, _ABORT = 0x01, 0x04, 0x05, 0x07
_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_ABORT_PDU = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"  # source 2: service provider


@dataclass(frozen=True)
class Stored:
    """What the store handler answers: a status and, when not success, why."""

    status: int
    comment: str = ""


@dataclass(frozen=True)
class Caller:
    """The calling side of an association (PS3.8 §9.3.2)."""

    ae_title: str
    address: str
    port: int


@dataclass(frozen=True)
class Received:
    """A data set received by C-STORE, written to a file that is the handler's to
    move or delete."""

    sop_class_uid: str
    sop_instance_uid: str  # as the command announced them
    path: Path
    sha256: str  # of the whole file, computed as it was written
    error: OSError | None  # what stopped writing it, if anything


StoreHandler = Callable[[Received], Stored]
# Called once an association is accepted: the store handler for that caller.
OpenStore = Callable[[Caller], StoreHandler]


class ProtocolError(Exception):
    """The peer broke the upper layer protocol: the association is aborted."""


@dataclass
class _Incoming:
    """The data set of one C-STORE being received."""

    command: Command
    path: Path
    file: BinaryIO | None
    error: OSError | None = None
    # Hashed as it arrives: hashlib releases the GIL, and ingest need not read the
    # file again (0.3 ms per 512x512 slice, which waited for the GIL behind the
    # header parser: bench/ingest.py).
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def write(self, data: bytes | memoryview) -> None:
        if self.file is None:
            return
        try:
            self.file.write(data)
        except OSError as exc:
            self.fail(exc)
            return
        self.digest.update(data)

    def fail(self, exc: OSError) -> None:
        """Remember why, give the disk space back, drop the rest of the data set."""
        self.error = self.error or exc
        if self.file is not None:
            file, self.file = self.file, None
            with contextlib.suppress(OSError, ValueError):  # its buffer cannot be written
                file.close()
        with contextlib.suppress(OSError):
            os.truncate(self.path, 0)


class StoreAssociation:
    """One accepted association, served until release, abort or timeout."""

    def __init__(
        self,
        sock: socket.socket,
        caller: Caller,
        contexts: dict[int, str],
        handle_store: StoreHandler,
        staging: Path,
    ) -> None:
        self.sock = sock
        self.caller = caller
        self.contexts = contexts  # accepted presentation context id -> transfer syntax
        self.handle_store = handle_store
        self.staging = staging
        self._buffer = bytearray(_RECV_CHUNK)
        self._command_bytes = bytearray()
        self._incoming: _Incoming | None = None
        self._answered = {True: 0, False: 0}  # C-STOREs answered, by success (or warning)

    def serve(self) -> None:
        log.info("storage association from %s (%s)", self.caller.ae_title, self.caller.address)
        try:
            while self._next_pdu():
                pass
        except (TimeoutError, ProtocolError, CommandError, ConnectionError) as exc:
            log.warning("association with %s aborted: %s", self.caller.ae_title, exc)
            with contextlib.suppress(OSError):
                self.sock.sendall(_ABORT_PDU)
        finally:
            if self._incoming is not None:  # cut off mid data set: nothing is kept
                self._incoming.fail(OSError("the association ended mid data set"))
                self._incoming.path.unlink(missing_ok=True)
            log.info(
                "association from %s ended: %d stored, %d not",
                self.caller.ae_title,
                self._answered[True],
                self._answered[False],
            )

    def _next_pdu(self) -> bool:
        header = self._read_exact(6)
        pdu_type, length = header[0], struct.unpack_from(">I", header, 2)[0]
        if pdu_type == _P_DATA:
            self._p_data(length)
            return True
        if pdu_type == _RELEASE_RQ:
            self._read_exact(length)
            self.sock.sendall(_RELEASE_RP)
            return False
        if pdu_type == _ABORT:
            self._read_exact(length)
            log.info("association with %s aborted by the peer", self.caller.ae_title)
            return False
        raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02x}")

    # P-DATA-TF: a sequence of PDV items, PS3.8 §9.3.5 and Annex E.
    def _p_data(self, length: int) -> None:
        while length > 0:
            item = self._read_exact(6)
            item_length, context_id, control = struct.unpack(">IBB", item)
            if item_length < 2 or item_length + 4 > length:
                raise ProtocolError("PDV item length does not fit the PDU")
            length -= 4 + item_length
            self._pdv(context_id, control, item_length - 2)

    def _pdv(self, context_id: int, control: int, size: int) -> None:
        if context_id not in self.contexts:
            raise ProtocolError(f"presentation context {context_id} was not accepted")
        is_command, is_last = bool(control & 1), bool(control & 2)
        if is_command:
            self._command_fragment(context_id, size, is_last)
            return
        incoming = self._incoming
        if incoming is None:
            raise ProtocolError("a data set fragment without a command")
        self._stream_into(incoming, size)
        if is_last:
            self._incoming = None
            self._finish_store(incoming)

    def _command_fragment(self, context_id: int, size: int, is_last: bool) -> None:
        self._command_bytes += self._read_exact(size)
        if not is_last:
            return
        command = parse_command(bytes(self._command_bytes), context_id)
        self._command_bytes.clear()
        if command.field == C_ECHO_RQ:
            self._respond(command, status.SUCCESS)
        elif command.field == C_STORE_RQ and command.has_data_set:
            self._incoming = self._open_incoming(command)
        else:
            self._respond(command, 0x0211, "this association serves C-ECHO and C-STORE")

    def _open_incoming(self, command: Command) -> _Incoming:
        path = self.staging / f"{uuid.uuid4().hex}.recv"
        transfer_syntax = self.contexts[command.context_id]
        try:
            file = path.open("wb")
        except OSError as exc:
            return _Incoming(command, path, None, exc)
        incoming = _Incoming(command, path, file)
        incoming.write(file_meta_prefix(command, transfer_syntax, self.caller.ae_title))
        return incoming

    def _stream_into(self, incoming: _Incoming, size: int) -> None:
        view = memoryview(self._buffer)
        while size:
            got = self.sock.recv_into(view, min(size, len(view)))
            if got == 0:
                incoming.fail(OSError("the peer closed the connection"))
                raise ConnectionError("the peer closed the connection mid data set")
            incoming.write(view[:got])
            size -= got

    def _finish_store(self, incoming: _Incoming) -> None:
        if incoming.file is not None:
            try:
                incoming.file.close()
            except OSError as exc:
                incoming.fail(exc)
        command = incoming.command
        received = Received(
            command.sop_class_uid,
            command.sop_instance_uid,
            incoming.path,
            incoming.digest.hexdigest(),
            incoming.error,
        )
        try:
            stored = self.handle_store(received)
        except Exception:  # a bug must not leave the sender without an answer
            log.exception("C-STORE of %s failed", command.sop_instance_uid)
            incoming.path.unlink(missing_ok=True)
            stored = Stored(UNEXPECTED_FAILURE, "the archive failed to process the instance")
        self._respond(command, stored.status, stored.comment)

    def _respond(self, command: Command, code: int, comment: str = "") -> None:
        body = encode_response(command, code, comment)
        pdv = struct.pack(">IBB", len(body) + 2, command.context_id, 0x03) + body
        self.sock.sendall(struct.pack(">BBI", _P_DATA, 0, len(pdv)) + pdv)

    def _read_exact(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            data += chunk
        return bytes(data)


def is_storage_only(request: A_ASSOCIATE_RQ, storage_like: Callable[[str], bool]) -> bool:
    """Does the association propose only Verification and storage SOP classes, with
    no SCP/SCU role selection? Those are served here; the rest by pynetdicom."""
    info = request.user_information
    if info is not None and info.role_selection:
        return False
    return all(
        str(item.abstract_syntax) == Verification or storage_like(str(item.abstract_syntax))
        for item in request.presentation_context
    )


def negotiate(
    request: A_ASSOCIATE_RQ, our_ae_title: str, max_pdu: int
) -> tuple[bytes, dict[int, str]] | bytes:
    """The A-ASSOCIATE-AC to send and the accepted contexts (id -> transfer syntax);
    or the encoded A-ASSOCIATE-RJ when the request cannot be accepted (PS3.8 §9.3.4).

    Our responses are a few hundred bytes, below any maximum PDU a peer may
    announce, so the peer's maximum is not kept."""
    if str(request.called_ae_title).strip() != our_ae_title.strip():
        return reject(1, 1, 7)  # permanent, service user, called AE title not recognised
    if str(request.application_context_name) != APPLICATION_CONTEXT:
        return reject(1, 1, 2)  # application context name not supported
    results = []
    accepted: dict[int, str] = {}
    for item in request.presentation_context:
        context = PresentationContext()
        context.context_id = item.context_id
        context.abstract_syntax = item.abstract_syntax
        syntax = next(
            (str(ts) for ts in item.transfer_syntax if str(ts) in _ACCEPTED_SYNTAXES), None
        )
        context.transfer_syntax = [syntax or item.transfer_syntax[0]]
        context.result = 0x00 if syntax else 0x04  # acceptance / transfer syntaxes not supported
        if syntax:
            accepted[item.context_id] = syntax
        results.append(context)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.called_ae_title = request.called_ae_title
    primitive.calling_ae_title = request.calling_ae_title
    primitive.result = 0
    primitive.presentation_context_definition_results_list = results
    primitive.user_information = _our_user_information(max_pdu)
    answer = A_ASSOCIATE_AC()
    answer.from_primitive(primitive)
    return answer.encode(), accepted


def reject(result: int, source: int, reason: int) -> bytes:
    """An encoded A-ASSOCIATE-RJ (PS3.8 §9.3.4)."""
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, reason
    answer = A_ASSOCIATE_RJ()
    answer.from_primitive(primitive)
    return answer.encode()


def _our_user_information(max_pdu: int) -> list[object]:
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [maximum, implementation, version]
