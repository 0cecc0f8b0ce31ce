"""A lean C-STORE requestor: one association, written and read on the calling thread.

pynetdicom moves every PDU through two queues and a polling thread, and encodes
each command set through pydicom; sending stored files that way costs several
milliseconds an instance, so an archive cannot keep up with a DCMTK peer. This
module speaks the few parts of the Upper Layer protocol a storage requestor needs
(PS3.8 9.3: A-ASSOCIATE, P-DATA-TF, A-RELEASE, A-ABORT) directly on the socket,
with pynetdicom's PDU classes for the association PDUs, and writes the C-STORE
command set by hand (PS3.7 9.3.1.1, Implicit VR Little Endian per PS3.7 6.3.1).
Data set bytes go out as they are, split into PDVs no longer than the peer's
maximum PDU (PS3.8 9.3.5, Annex E).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from pacs.dimse import command_elements, encode_store_request

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 Annex A.2.1
OUR_MAX_PDU = 1 << 20  # what we accept; only small responses come back
UNLIMITED_SEND = 1 << 20  # PDU size to use when the peer sets no limit (0)
_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
_A_ASSOCIATE_AC, _A_ASSOCIATE_RJ, _P_DATA_TF = 0x02, 0x03, 0x04
_A_RELEASE_RQ, _A_RELEASE_RP, _A_ABORT = 0x05, 0x06, 0x07
_COMMAND, _LAST = 0x01, 0x02  # PDV message control header bits (PS3.8 E.2)


class LinkError(ConnectionError):
    """The association could not be made, or broke."""


@dataclass(frozen=True)
class Accepted:
    """An accepted presentation context (PS3.8 9.3.3.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True)
class StoreResponse:
    status: int
    error_comment: str = ""


class StoreLink:
    """An established association for C-STORE requests; use as a context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        calling_ae: str,
        called_ae: str,
        contexts: list[PresentationContext],
        *,
        timeout: float = 120,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock: socket.socket = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        self.accepted: list[Accepted] = []
        self.max_pdu = UNLIMITED_SEND
        self.established = False
        try:
            self._associate(calling_ae, called_ae, contexts)
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> StoreLink:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    # --- association -------------------------------------------------------------

    def _associate(
        self, calling_ae: str, called_ae: str, contexts: list[PresentationContext]
    ) -> None:
        request = A_ASSOCIATE()
        request.application_context_name = APPLICATION_CONTEXT
        request.calling_ae_title = calling_ae
        request.called_ae_title = called_ae
        for index, context in enumerate(contexts):
            context.context_id = 2 * index + 1
        request.presentation_context_definition_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = OUR_MAX_PDU
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        request.user_information = [max_length, implementation, version]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(request)
        self._sock.sendall(pdu.encode())
        kind, body = self._read_pdu()
        if kind == _A_ASSOCIATE_RJ:
            rejected = A_ASSOCIATE_RJ()
            rejected.decode(_PDU_HEADER.pack(kind, 0, len(body)) + body)
            raise LinkError(f"association rejected ({rejected.reason_str})")
        if kind != _A_ASSOCIATE_AC:
            raise LinkError(f"unexpected PDU type {kind:#04x} in answer to A-ASSOCIATE-RQ")
        answer = A_ASSOCIATE_AC()
        answer.decode(_PDU_HEADER.pack(kind, 0, len(body)) + body)
        primitive = answer.to_primitive()
        proposed = {cx.context_id: cx.abstract_syntax for cx in contexts}
        for result in primitive.presentation_context_definition_results_list:
            if result.result == 0 and result.context_id in proposed:
                self.accepted.append(
                    Accepted(
                        int(result.context_id),
                        str(proposed[result.context_id]),
                        str(result.transfer_syntax[0]),
                    )
                )
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification) and item.maximum_length_received:
                self.max_pdu = int(item.maximum_length_received)
        self.established = True

    def release(self) -> None:
        """A-RELEASE (PS3.8 7.2); the socket is closed whatever the peer answers."""
        if not self.established:
            return
        self.established = False
        try:
            self._sock.sendall(_PDU_HEADER.pack(_A_RELEASE_RQ, 0, 4) + b"\0\0\0\0")
            while self._read_pdu()[0] != _A_RELEASE_RP:
                pass
        except (OSError, LinkError):
            pass
        finally:
            self._sock.close()

    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3), then close."""
        if self.established:
            self.established = False
            with contextlib.suppress(OSError):
                self._sock.sendall(_PDU_HEADER.pack(_A_ABORT, 0, 4) + b"\0\0\0\0")
        self._sock.close()

    # --- C-STORE -------------------------------------------------------------------

    def store(
        self,
        context: Accepted,
        sop_instance_uid: str,
        dataset: bytes | BinaryIO,
        *,
        message_id: int,
        originator: tuple[str, int] | None = None,
    ) -> StoreResponse:
        """Send one C-STORE-RQ with ``dataset`` (encoded in the context's syntax; bytes,
        or a file read from its current position to the end, a PDU at a time) and wait
        for its response. Raises LinkError when the association breaks."""
        command = encode_store_request(
            context.abstract_syntax, sop_instance_uid, message_id, originator
        )
        size = max(self.max_pdu - _PDV_HEADER.size, 1)
        if isinstance(dataset, bytes):
            view = memoryview(dataset)
            chunks = (view[start : start + size] for start in range(0, len(view), size))
        else:
            chunks = iter(lambda: dataset.read(size), b"")
        try:
            self._send_pdvs(context.context_id, iter([command]), _COMMAND)
            self._send_pdvs(context.context_id, chunks, 0)
            return self._read_response(message_id)
        except OSError as exc:
            self.abort()
            raise LinkError(f"association broken: {exc}") from exc

    def _send_pdvs(
        self, context_id: int, chunks: Iterator[bytes | memoryview], control: int
    ) -> None:
        """One P-DATA-TF per chunk, the last PDV flagged (PS3.8 E.2): a chunk is read
        ahead to know which one is last."""
        chunk = next(chunks, b"")
        while True:
            following = next(chunks, None)
            flags = control | (_LAST if following is None else 0)
            header = _PDU_HEADER.pack(_P_DATA_TF, 0, _PDV_HEADER.size + len(chunk))
            self._sock.sendall(header + _PDV_HEADER.pack(len(chunk) + 2, context_id, flags) + chunk)
            if following is None:
                return
            chunk = following

    def _read_response(self, message_id: int) -> StoreResponse:
        command = bytearray()
        while True:
            kind, body = self._read_pdu()
            if kind == _A_ABORT:
                self.established = False
                self._sock.close()
                raise LinkError("the peer aborted the association")
            if kind == _A_RELEASE_RQ:
                self.abort()
                raise LinkError("the peer released the association during a C-STORE")
            if kind != _P_DATA_TF:
                raise LinkError(f"unexpected PDU type {kind:#04x}")
            offset = 0
            while offset < len(body):
                length, _, flags = _PDV_HEADER.unpack_from(body, offset)
                value = body[offset + _PDV_HEADER.size : offset + 4 + length]
                offset += 4 + length
                if flags & _COMMAND:
                    command += value
                    if flags & _LAST:
                        elements = command_elements(bytes(command))
                        responded = elements.get(0x00000120)
                        if responded is not None and _us(responded) != message_id:
                            command.clear()
                            continue  # not ours: a stray response
                        status = _us(elements.get(0x00000900, b"\xff\xff"))
                        comment = elements.get(0x00000902, b"").decode("ascii", "replace")
                        return StoreResponse(status, comment.strip("\0 "))

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._read_exactly(_PDU_HEADER.size)
        kind, _, length = _PDU_HEADER.unpack(header)
        if length > 64 * OUR_MAX_PDU:
            raise LinkError(f"PDU of {length} bytes is more than we accept")
        return kind, self._read_exactly(length)

    def _read_exactly(self, size: int) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            count = self._sock.recv_into(view[got:])
            if count == 0:
                raise LinkError("the peer closed the connection")
            got += count
        return bytes(buffer)


def _us(value: bytes) -> int:
    return int(struct.unpack("<H", value[:2])[0]) if len(value) >= 2 else 0xFFFF
