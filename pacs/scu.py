"""Sending stored instances to another node with C-STORE (PS3.4 Annex B, PS3.7 9.1.1).

One association carries a whole batch; each instance gets its own result. A
stored file goes out as it is, without decoding (the bytes after its File Meta
Information are the data set, PS3.10 7.1), whenever the peer accepted its
transfer syntax; otherwise it is re-encoded in Explicit VR Little Endian
(:mod:`pacs.transcode`). The presentation contexts offered are therefore, for
each SOP class, one per stored syntax plus one uncompressed fallback, so the
peer can accept the stored syntax and the fallback independently (PS3.8 9.3.2.2).

C-MOVE sub-operations and forwarding open their own association to the node
through :class:`pacs.store_link.StoreLink` (the lean requestor: no queues, no
polling thread, Nagle off). C-GET sends over the requestor's own pynetdicom
association (roles reversed), with :func:`send_on_association`.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

from pacs.settings import Settings
from pacs.store_link import Accepted, LinkError, StoreLink
from pacs.transcode import TranscodeError, to_explicit_little_endian
from storage import Archive
from storage.nodes import Node
from storage.retrieve import StoredInstance

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
SUCCESS = 0x0000
WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}  # PS3.4 B.2.3 and PS3.7 C.4.2
NO_CONTEXT = 0x0122  # PS3.7 C.5.x "Refused: SOP Class not supported"
CANNOT_SEND = 0xC000
_META_START = 132  # after the 128-byte preamble and "DICM"


class SendError(RuntimeError):
    """The destination could not be reached or refused the association."""


@dataclass(frozen=True)
class SendResult:
    """The outcome of one C-STORE sub-operation; ``status`` is None when no response came."""

    sop_instance_uid: str
    status: int | None
    comment: str = ""

    @property
    def success(self) -> bool:
        return self.status == SUCCESS

    @property
    def warning(self) -> bool:
        return self.status in WARNING_STATUSES

    @property
    def failed(self) -> bool:
        return not (self.success or self.warning)


def disable_nagle(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket. Nagle's
    algorithm delays the small PDUs that end each message: about 10x slower."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def storage_contexts(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts to offer for sending ``instances``: each SOP class in each stored
    syntax, and each SOP class uncompressed (the transcoding fallback)."""
    offers: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in instances:
        syntax = item.transfer_syntax_uid
        if syntax not in UNCOMPRESSED:
            offers[(item.sop_class_uid, (syntax,))] = None
        offers[(item.sop_class_uid, UNCOMPRESSED)] = None
    if len(offers) > MAX_CONTEXTS:
        log.warning("%d presentation contexts needed; offering %d", len(offers), MAX_CONTEXTS)
    return [build_context(sop, list(syntaxes)) for sop, syntaxes in list(offers)[:MAX_CONTEXTS]]


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS client context for nodes registered with ``tls`` (PS3.15 B.1): the peer's
    certificate is verified against ``PACS_TLS_CA_FILE`` (or the system's CAs) and its
    host name; ours is presented when ``PACS_TLS_CERT_FILE`` is set."""
    context = ssl.create_default_context(
        cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None
    )
    if settings.tls_cert_file is not None:
        context.load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file if settings.tls_key_file else None
        )
    return context


@contextmanager
def store_association(
    ae_title: str,
    node: Node,
    instances: Sequence[StoredInstance],
    tls: ssl.SSLContext | None = None,
) -> Iterator[StoreLink]:
    """An association to ``node`` ready to C-STORE ``instances``; released at the end.

    A node registered with ``tls`` is reached over TLS with ``tls`` (see
    :func:`tls_context`), or the system's defaults when none is given.
    """
    if node.tls and tls is None:
        tls = ssl.create_default_context()
    where = f"{node.name} ({node.ae_title}@{node.host}:{node.port})"
    try:
        link = StoreLink(
            node.host,
            node.port,
            ae_title,
            node.ae_title,
            storage_contexts(instances),
            tls=tls if node.tls else None,
        )
    except (OSError, LinkError) as exc:
        raise SendError(f"{where}: {exc}") from exc
    with link:
        yield link


def send_instance(
    link: StoreLink,
    archive: Archive,
    item: StoredInstance,
    *,
    msg_id: int = 1,
    originator: tuple[str, int] | None = None,
) -> SendResult:
    """C-STORE one stored instance over ``link``, re-encoded only if the peer needs it.

    ``originator`` is the Move Originator AE title and Message ID of a C-MOVE
    sub-operation (PS3.7 9.1.1.1.7).
    """
    uid = item.sop_instance_uid
    if not link.established:
        return SendResult(uid, None, "the association is gone")
    try:
        context, payload = _payload(link.accepted, archive, item)
    except (TranscodeError, OSError, LookupError) as exc:
        return _unsendable(uid, exc)
    try:
        response = link.store(context, uid, payload, message_id=msg_id, originator=originator)
    except LinkError as exc:
        return SendResult(uid, None, str(exc))
    finally:
        if not isinstance(payload, bytes):
            payload.close()
    return SendResult(uid, response.status, response.error_comment)


def send_on_association(
    assoc: Association, archive: Archive, item: StoredInstance, *, msg_id: int
) -> SendResult:
    """C-STORE one instance over a pynetdicom association we serve (C-GET, PS3.4 C.4.3):
    the association's reactor is the thread running this, so nothing else takes the
    response off the DIMSE queue."""
    uid = item.sop_instance_uid
    accepted = [
        Accepted(int(cx.context_id or 0), str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in assoc.accepted_contexts
        if cx.as_scu
    ]
    try:
        context, payload = _payload(accepted, archive, item)
        if isinstance(payload, bytes):
            data = payload
        else:
            with payload:
                data = payload.read()
    except (TranscodeError, OSError, LookupError) as exc:
        return _unsendable(uid, exc)
    request = C_STORE()
    request.MessageID = msg_id
    request.AffectedSOPClassUID = item.sop_class_uid
    request.AffectedSOPInstanceUID = uid
    request.Priority = 2
    request.DataSet = io.BytesIO(data)
    if not assoc.is_established:
        return SendResult(uid, None, "the association is gone")
    assoc.dimse.send_msg(request, context.context_id)
    _, response = assoc.dimse.get_msg(block=True)
    if response is None:
        assoc.abort()  # no answer within the DIMSE timeout: the peer is stuck or gone
        return SendResult(uid, None, "no response from the peer")
    status = getattr(response, "Status", None)
    return SendResult(uid, status, str(getattr(response, "ErrorComment", "") or ""))


def _unsendable(uid: str, exc: Exception) -> SendResult:
    log.warning("cannot send %s: %s", uid, exc)
    return SendResult(uid, NO_CONTEXT if isinstance(exc, LookupError) else CANNOT_SEND, str(exc))


def _payload(
    accepted: list[Accepted], archive: Archive, item: StoredInstance
) -> tuple[Accepted, bytes | BinaryIO]:
    """The accepted context to send on and the data set to send: the stored file,
    open just past its File Meta Information, when the peer accepted the stored
    syntax; else the instance re-encoded uncompressed (bytes)."""
    contexts = [cx for cx in accepted if cx.abstract_syntax == item.sop_class_uid]
    if not contexts:
        raise LookupError(f"the peer accepted no context for SOP class {item.sop_class_uid}")
    for cx in contexts:
        if cx.transfer_syntax == item.transfer_syntax_uid:
            fp = archive.blobs.open(item.blob_key)
            try:
                _skip_file_meta(fp)
            except Exception:
                fp.close()
                raise
            return cx, fp
    for syntax in UNCOMPRESSED:
        for cx in contexts:
            if cx.transfer_syntax == syntax:
                with archive.blobs.open(item.blob_key) as fp:
                    ds = dcmread(io.BytesIO(to_explicit_little_endian(fp)))
                data = encode(ds, UID(syntax).is_implicit_VR, True)
                if data is None:
                    raise TranscodeError(f"cannot encode {item.sop_instance_uid} as {syntax}")
                return cx, data
    raise LookupError(f"the peer accepts {item.sop_class_uid} in no syntax we can make")


def _skip_file_meta(fp: BinaryIO) -> None:
    """Position a Part 10 file at its data set: just past the File Meta Information.

    The meta group starts with its group length (0002,0000) UL right after the
    128-byte preamble and ``DICM`` (PS3.10 7.1), so it is skipped without parsing;
    pydicom parses the rare file whose meta group lacks one (0.7 ms an instance).
    """
    head = fp.read(_META_START + 12)
    if head[128:132] == b"DICM" and head[_META_START : _META_START + 6] == b"\x02\x00\x00\x00UL":
        length = int.from_bytes(head[_META_START + 8 : _META_START + 12], "little")
        fp.seek(_META_START + 12 + length)
        return
    fp.seek(0)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
