"""Which code serves an incoming association: the lean Storage SCP or pynetdicom.

pynetdicom's server accepts every connection; before pynetdicom reads anything,
:class:`RoutingRequestHandler` peeks at the A-ASSOCIATE-RQ (PS3.8 §9.3.2). An
association that proposes only Verification and storage SOP classes (a scanner
pushing a study) is served by :mod:`pacs.store_scp`; anything else (queries,
retrieves, role selection, a malformed request) goes to pynetdicom untouched,
since peeking consumed nothing.

The same handler serves the TLS port (PS3.15 B.1): the handshake comes first, in
this thread (:mod:`pacs.tls_server`), then the same routing. In strict mode
(``PACS_DICOM_STRICT_NODES``) an ``admit`` check runs on the peeked request before
either SCP sees it, so both paths reject an unknown calling AE title the same way.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
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
from pacs.tls_server import secure

log = logging.getLogger(__name__)

_ASSOCIATE_RQ = 0x01
_LARGEST_REQUEST = 1 << 20  # an A-ASSOCIATE-RQ is a few kB; larger ones go to pynetdicom
# (calling AE title, peer address) -> may this caller associate at all?
Admit = Callable[[str, str], bool]


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
    *,
    admit: Admit | None = None,
    tls: ssl.SSLContext | None = None,
) -> ThreadedAssociationServer:
    """What ``ae.start_server(address, block=False, ...)`` does, with storage-only
    associations served by ``lean`` (``None``: everything by pynetdicom), callers
    that ``admit`` refuses rejected, and every connection wrapped in ``tls`` if given
    (:func:`pacs.tls_server.server_context`)."""
    server = ae.make_server(
        address,
        evt_handlers=evt_handlers,
        server_class=ThreadedAssociationServer,
        request_handler=RoutingRequestHandler,
    )
    server.lean_storage = lean  # type: ignore[attr-defined]
    server.admit = admit  # type: ignore[attr-defined]
    server.tls_context = tls  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    ae._servers.append(server)  # as AE.start_server does: server.shutdown() removes it
    return server


class RoutingRequestHandler(RequestHandler):
    """pynetdicom's request handler, with storage-only associations served lean."""

    server: ThreadedAssociationServer

    def handle(self) -> None:
        lean: LeanStorage | None = getattr(self.server, "lean_storage", None)
        admit: Admit | None = getattr(self.server, "admit", None)
        tls: ssl.SSLContext | None = getattr(self.server, "tls_context", None)
        timeout = lean.network_timeout if lean else float(self.server.ae.network_timeout or 60)
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            secured = secure(sock, tls, timeout, str(self.client_address[0]))
            if secured is None:
                return
            self.request = sock = secured
        if lean is None and admit is None:
            sock.settimeout(None)
            super().handle()
            return
        raw = _peek_request(sock, timeout)
        request = _decode(raw) if raw else None
        if admit is not None and not self._admitted(sock, request, admit):
            _close(sock)
            return
        if lean is None or request is None or not is_storage_only(request, storage_like):
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

    def _admitted(self, sock: socket.socket, request: A_ASSOCIATE_RQ | None, admit: Admit) -> bool:
        """Strict mode: is the caller a registered node? If not, an A-ASSOCIATE-RJ
        (permanent, service user, calling AE title not recognised; PS3.8 9.3.4) is
        sent. A request that cannot be read names no caller: it is closed unanswered."""
        address = str(self.client_address[0])
        if request is None:
            log.warning("closed a connection from %s: no readable A-ASSOCIATE-RQ", address)
            return False
        calling = str(request.calling_ae_title).strip()
        try:
            admitted = admit(calling, address)
        except Exception as exc:  # the node registry (index) is unavailable
            log.error("cannot check %s (%s) against the node registry: %s", calling, address, exc)
            with contextlib.suppress(OSError):
                sock.sendall(reject(2, 2, 1))  # transient, service provider (ACSE), no reason
            return False
        if admitted:
            return True
        log.warning("rejected association from %s (%s): not a registered node", calling, address)
        with contextlib.suppress(OSError):
            sock.sendall(reject(1, 1, 3))
        return False

    def _serve_lean(self, sock: socket.socket, request: A_ASSOCIATE_RQ, lean: LeanStorage) -> None:
        caller = Caller(
            ae_title=str(request.calling_ae_title).strip(),
            address=str(self.client_address[0]),
            port=int(self.client_address[1]),
        )
        with lean.lock:
            # the AE's pynetdicom acceptors on every port, as pynetdicom counts them
            served = sum(1 for assoc in self.server.ae.active_associations if assoc.is_acceptor)
            busy = lean.active + served >= lean.max_associations
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
