"""Which code serves an incoming association: the lean Storage SCP or pynetdicom.

pynetdicom's server accepts every connection; before pynetdicom reads anything,
:class:`RoutingRequestHandler` peeks at the A-ASSOCIATE-RQ (PS3.8 §9.3.2). An
association that proposes only Verification and storage SOP classes (a scanner
pushing a study) is served by :mod:`pacs.store_scp`; anything else (queries,
retrieves, role selection, a malformed request) goes to pynetdicom untouched,
since peeking consumed nothing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from pacs.store_scp import (
    Caller,
    OpenStore,
    StoreAssociation,
    is_storage_only,
    negotiate,
    reject,
)

log = logging.getLogger(__name__)

_ASSOCIATE_RQ = 0x01
_LARGEST_REQUEST = 1 << 20  # an A-ASSOCIATE-RQ is a few kB; larger ones go to pynetdicom


@dataclass
class LeanStorage:
    """What the lean Storage SCP needs, hung on the pynetdicom server."""

    ae_title: str
    max_pdu: int
    max_associations: int
    network_timeout: float
    staging: Path
    open_store: OpenStore
    active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_server(
    ae: AE,
    address: tuple[str, int],
    evt_handlers: list[EventHandlerType],
    lean: LeanStorage | None,
) -> ThreadedAssociationServer:
    """What ``ae.start_server(address, block=False, ...)`` does, with storage-only
    associations served by ``lean`` (``None``: everything by pynetdicom)."""
    server = ae.make_server(
        address,
        evt_handlers=evt_handlers,
        server_class=ThreadedAssociationServer,
        request_handler=RoutingRequestHandler,
    )
    server.lean_storage = lean  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    ae._servers.append(server)  # as AE.start_server does: server.shutdown() removes it
    return server


class RoutingRequestHandler(RequestHandler):
    """pynetdicom's request handler, with storage-only associations served lean."""

    server: ThreadedAssociationServer

    def handle(self) -> None:
        lean: LeanStorage | None = getattr(self.server, "lean_storage", None)
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if lean is None:
            super().handle()
            return
        raw = _peek_request(sock, lean.network_timeout)
        request = _decode(raw) if raw else None
        if raw is None or request is None or not is_storage_only(request, storage_like):
            sock.settimeout(None)  # as accepted: pynetdicom does its own timing
            super().handle()
            return
        try:
            _recv_exact(sock, len(raw))  # consume what was peeked
            self._serve_lean(sock, request, lean)
        except OSError as exc:
            log.warning("storage association from %s failed: %s", self.client_address, exc)
        finally:
            _close(sock)

    def _serve_lean(self, sock: socket.socket, request: A_ASSOCIATE_RQ, lean: LeanStorage) -> None:
        caller = Caller(
            ae_title=str(request.calling_ae_title).strip(),
            address=str(self.client_address[0]),
            port=int(self.client_address[1]),
        )
        with lean.lock:
            busy = lean.active + len(self.server.active_associations) >= lean.max_associations
            if not busy:
                lean.active += 1
        if busy:
            log.warning("refused %s: %d associations already", caller.ae_title, lean.active)
            sock.sendall(reject(2, 3, 2))  # transient, provider (presentation), local limit
            return
        try:
            answer = negotiate(request, lean.ae_title, lean.max_pdu)
            if isinstance(answer, bytes):
                log.warning("rejected association from %s (%s)", caller.ae_title, caller.address)
                sock.sendall(answer)
                return
            accept, contexts = answer
            sock.sendall(accept)
            handle_store = lean.open_store(caller)
            StoreAssociation(sock, caller, contexts, handle_store, lean.staging).serve()
        finally:
            with lean.lock:
                lean.active -= 1


def storage_like(uid: str) -> bool:
    """A Storage SOP Class, or a UID pynetdicom does not know (a vendor-private storage
    class: accepted as storage, as ``UNRESTRICTED_STORAGE_SERVICE`` does)."""
    service = uid_to_service_class(uid)
    return service is StorageServiceClass or service is ServiceClass


def _peek_request(sock: socket.socket, timeout: float) -> bytes | None:
    """The whole A-ASSOCIATE-RQ PDU, read without consuming it; ``None`` if the first
    PDU is something else, too large, or does not arrive in time."""
    header = _peek(sock, 6, timeout)
    if header is None or header[0] != _ASSOCIATE_RQ:
        return None
    length = struct.unpack_from(">I", header, 2)[0]
    if length > _LARGEST_REQUEST:
        return None
    return _peek(sock, 6 + length, timeout)


def _peek(sock: socket.socket, size: int, timeout: float) -> bytes | None:
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(size, socket.MSG_PEEK)
            if len(data) == size:
                return data
            if not data or time.monotonic() > deadline:
                return None
            time.sleep(0.001)  # the rest of the PDU is still on its way
    except OSError:
        return None


def _decode(raw: bytes) -> A_ASSOCIATE_RQ | None:
    request = A_ASSOCIATE_RQ()
    try:
        request.decode(raw)
    except Exception:  # any malformed request: let pynetdicom answer it
        return None
    return request


def _close(sock: socket.socket, linger: float = 0.5) -> None:
    """Close after reading what the peer already sent (for at most ``linger`` s):
    closing with unread input makes the kernel answer with a reset, which can destroy
    the A-ABORT or A-RELEASE-RP we just sent before the peer reads it."""
    deadline = time.monotonic() + linger
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    with contextlib.suppress(OSError):
        sock.close()


def _recv_exact(sock: socket.socket, size: int) -> None:
    remaining = size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        remaining -= len(chunk)
