"""The server side of DICOM TLS (PS3.15 B.1, the Basic TLS Secure Transport
Connection Profile): the context for the listener's TLS port and its sockets.

The TLS port serves exactly what the plain port serves, routed the same way
(:mod:`pacs.listener`). Two things differ from pynetdicom's own TLS server:

- The handshake runs in the connection's handler thread with the network timeout,
  never in the accept loop (pynetdicom wraps in ``get_request``, where a client that
  connects and sends nothing would stop every later connection from being accepted).
- Routing peeks at the A-ASSOCIATE-RQ, and TLS sockets cannot ``MSG_PEEK``: a
  :class:`PeekableSSLSocket` keeps the peeked plaintext and hands it out again
  first, and reports it as ``pending()`` so pynetdicom's reactor (which asks an
  ``SSLSocket`` for buffered data beside ``select``) reads it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from typing import Any, cast

from pacs.settings import Settings

log = logging.getLogger(__name__)


class TLSSettingsError(ValueError):
    """The TLS listener's certificate, key or CAs cannot be loaded."""


def tls_listener_enabled(settings: Settings) -> bool:
    """The TLS port runs when it is not 0 and a server certificate and key are set."""
    return bool(settings.dicom_tls_port and settings.tls_cert_file and settings.tls_key_file)


def server_context(settings: Settings) -> ssl.SSLContext:
    """The TLS server context: our certificate (``PACS_TLS_CERT_FILE``/``KEY_FILE``),
    TLS 1.2 or later (BCP 195, which PS3.15 B.1 refers to), and, when
    ``PACS_DICOM_TLS_REQUIRE_CLIENT_CERT`` is set, a client certificate that
    ``PACS_TLS_CA_FILE`` (else the system's CAs) vouches for.

    Without that setting no client certificate is asked for: the connection is
    encrypted and the server authenticated, and the caller is identified by its AE
    title as on the plain port (many modalities cannot present a certificate)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise TLSSettingsError("the DICOM TLS port needs PACS_TLS_CERT_FILE and PACS_TLS_KEY_FILE")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.dicom_tls_require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            if settings.tls_ca_file is not None:
                context.load_verify_locations(cafile=str(settings.tls_ca_file))
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    except OSError as exc:  # ssl.SSLError too: a missing, unreadable or mismatched file
        raise TLSSettingsError(
            f"cannot load the DICOM TLS certificate, key or CAs (PACS_TLS_CERT_FILE, "
            f"PACS_TLS_KEY_FILE, PACS_TLS_CA_FILE): {exc}"
        ) from exc
    context.sslsocket_class = PeekableSSLSocket
    return context


def secure(
    sock: socket.socket, context: ssl.SSLContext, timeout: float, peer: str
) -> PeekableSSLSocket | None:
    """``sock`` after a server-side TLS handshake of at most ``timeout`` seconds;
    ``None`` (the connection closed, the reason logged) when the handshake fails: a
    plain DICOM client, an untrusted or missing client certificate, a silent peer."""
    tls: PeekableSSLSocket | None = None
    try:
        # server_context() made the context return PeekableSSLSockets
        tls = cast(
            PeekableSSLSocket,
            context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False),
        )
        tls.settimeout(timeout)
        tls.do_handshake()
    except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
        log.warning("TLS handshake with %s failed: %s", peer, exc)
        with contextlib.suppress(OSError):
            (tls or sock).close()
        return None
    return tls


class PeekableSSLSocket(ssl.SSLSocket):
    """An ``SSLSocket`` that supports ``recv(n, MSG_PEEK)``: what is peeked is
    decrypted once, kept, and returned first by later reads."""

    _peeked: bytes = b""
    _eof: bool = False

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK:
            if len(self._peeked) < buflen and not self._eof:
                more = super().recv(buflen - len(self._peeked), flags & ~socket.MSG_PEEK)
                self._eof = not more
                self._peeked += more
            return self._peeked[:buflen]
        if self._peeked:
            data, self._peeked = self._peeked[:buflen], self._peeked[buflen:]
            return data
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        if self._peeked and not flags & socket.MSG_PEEK:
            view = memoryview(buffer).cast("B")
            size = min(len(self._peeked), nbytes or len(view), len(view))
            view[:size] = self._peeked[:size]
            self._peeked = self._peeked[size:]
            return size
        return super().recv_into(buffer, nbytes, flags)

    def pending(self) -> int:
        return len(self._peeked) + super().pending()
