"""The DICOM listener: a pynetdicom AE serving Verification, Storage and Query/Retrieve.

An association that only stores (a modality pushing a study) is served by the
lean Storage SCP in :mod:`pacs.store_scp` (:mod:`pacs.listener` routes it); the
rest by pynetdicom, whose C-STORE data sets are streamed straight into a file in
the blob store's staging folder (``STORE_RECV_CHUNKED_DATASET``). Either way the
file is handed to :meth:`storage.Archive.ingest`, which renames it into place:
the bytes are kept exactly as received and pixels are never decoded (PS3.4
Annex B). C-FIND is in
:mod:`pacs.find`, C-MOVE and C-GET in :mod:`pacs.move`; who may do what is
:mod:`pacs.access`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pacs import status
from pacs.access import NOT_AUTHORIZED, Access, Right
from pacs.find import MODEL_LEVELS, handle_find
from pacs.listener import LeanStorage, start_server
from pacs.move import GET_MODELS, MOVE_MODELS, install, plan_retrieve
from pacs.scu import disable_nagle
from pacs.settings import Settings
from pacs.store_scp import Caller, OpenStore, Received, Stored, StoreHandler
from pacs.tls_server import server_context, tls_listener_enabled
from storage import Archive, IngestResult, Outcome, Problem, Source
from storage.blobs import staging_tempdir
from storage.nodes import Node

log = logging.getLogger(__name__)

# Query/Retrieve requests are small identifiers: the uncompressed syntaxes do.
QUERY_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


def build_ae(settings: Settings) -> AE:
    """An AE that accepts every storage SOP class (vendor-private ones too) in
    every transfer syntax pydicom knows, with a large maximum PDU."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _ReceiveFile  # type: ignore[assignment]
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = True
    ae.network_timeout = 60
    ae.add_supported_context(Verification, AllTransferSyntaxes)
    for model in [*MODEL_LEVELS, *MOVE_MODELS, *GET_MODELS]:
        ae.add_supported_context(model, QUERY_SYNTAXES)
    install()  # our C-MOVE / C-GET sub-operations (pacs.move)
    return ae


def start_dicom_server(archive: Archive, settings: Settings) -> list[ThreadedAssociationServer]:
    """Start listening on ``settings.dicom_port``, and with TLS on
    ``settings.dicom_tls_port`` when a server certificate is configured
    (:func:`pacs.tls_server.tls_listener_enabled`), in background threads."""
    tls = server_context(settings) if tls_listener_enabled(settings) else None
    staging_tempdir(archive.blobs)
    ae = build_ae(settings)
    access = Access(archive, settings)
    handlers = [
        (evt.EVT_CONN_OPEN, disable_nagle),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, _handle_store, [archive, access]),
        (evt.EVT_C_FIND, handle_find, [archive, access, settings.ae_title]),
        (evt.EVT_C_MOVE, plan_retrieve, [archive, access, settings]),
        (evt.EVT_C_GET, plan_retrieve, [archive, access, settings]),
    ]
    lean = LeanStorage(
        ae_title=settings.ae_title,
        max_pdu=settings.max_pdu_size,
        max_associations=settings.max_associations,
        network_timeout=float(ae.network_timeout or 60),
        staging=archive.blobs.staging_dir(),
        open_store=_lean_store(archive, access),
    )
    admit = access.admits if settings.dicom_strict_nodes else None
    server = start_server(ae, ("0.0.0.0", settings.dicom_port), handlers, lean, admit=admit)
    log.info("DICOM listener %s on port %d", settings.ae_title, server.server_address[1])
    servers = [server]
    if tls is not None:
        address = ("0.0.0.0", settings.dicom_tls_port)
        servers.append(start_server(ae, address, handlers, lean, admit=admit, tls=tls))
        port = servers[-1].server_address[1]
        log.info("DICOM TLS listener %s on port %d", settings.ae_title, port)
    return servers


def _handle_echo(event: evt.Event) -> int:
    return status.SUCCESS


class _ReceiveFile:
    """The file pynetdicom streams a received data set into (it calls
    ``NamedTemporaryFile(...)`` in its network thread), made safe for a full or
    unwritable disk: there an ``OSError`` would kill the association with no
    response at all. Instead the first error is remembered, the partial file
    emptied to give the space back and the rest of the data set dropped, so the
    C-STORE handler can answer 0xA700 and the association goes on.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.file = self  # pynetdicom calls ``.file.flush()``
        self._fh: Any = None
        try:
            self._fh = tempfile.NamedTemporaryFile(**kwargs)  # noqa: SIM115 (closed by pynetdicom)
            self.name: str = self._fh.name
        except OSError as exc:
            self.name = str(Path(tempfile.gettempdir(), f"{uuid.uuid4().hex}.failed"))
            self._fail(exc)

    def write(self, data: bytes) -> int:
        if self._fh is not None:
            try:
                self._fh.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        with _receive_errors_lock:
            _receive_errors[self.name] = exc
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), 0)  # give the space back at once
            with contextlib.suppress(OSError):
                fh.close()


_receive_errors: dict[str, OSError] = {}  # received file path -> why receiving it failed
_receive_errors_lock = threading.Lock()


def _take_receive_error(path: Path) -> OSError | None:
    """The error that stopped receiving into ``path``, if any (and forget it)."""
    with _receive_errors_lock:
        return _receive_errors.pop(str(path), None)


def _handle_store(event: evt.Event, archive: Archive, access: Access) -> Dataset:
    """C-STORE on a pynetdicom association (one that also queries or retrieves)."""
    request = event.request
    path = Path(event.dataset_path)
    failed = _take_receive_error(path)
    refused = access.refusal(event, Right.STORE)
    if refused is not None:
        path.unlink(missing_ok=True)
        return _as_dataset(Stored(NOT_AUTHORIZED, refused))
    result = store_received(
        archive,
        Source(
            ae_title=str(event.assoc.requestor.ae_title),
            site=_site(access.node(event)),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            sop_class_uid=str(request.AffectedSOPClassUID),
        ),
        path,
        failed,
    )
    return _as_dataset(store_status(result))


def _lean_store(archive: Archive, access: Access) -> OpenStore:
    """C-STORE on a storage-only association (:mod:`pacs.store_scp`): the caller's
    node and rights are looked up once, when the association is accepted."""

    def open_store(caller: Caller) -> StoreHandler:
        node = access.lookup(caller.ae_title, caller.address)
        refused = access.refusal_for(node, caller.ae_title, Right.STORE)

        def store(received: Received) -> Stored:
            if refused is not None:
                received.path.unlink(missing_ok=True)
                return Stored(NOT_AUTHORIZED, refused)
            uids = received.sop_instance_uid, received.sop_class_uid
            source = Source(caller.ae_title, _site(node), *uids)
            return store_status(
                store_received(archive, source, received.path, received.error, received.sha256)
            )

        return store

    return open_store


def store_received(
    archive: Archive, source: Source, path: Path, failed: OSError | None, sha256: str | None = None
) -> IngestResult:
    """Ingest a received data set (``sha256`` of the file if hashed while written),
    or reject it when writing it to disk failed."""
    if failed is None:
        return archive.ingest(path, source, move=True, sha256=sha256)
    path.unlink(missing_ok=True)
    uid = source.sop_instance_uid or ""
    log.error("cannot receive %s: %s", uid, failed)
    reason = f"cannot write received data: {failed.strerror or failed}"
    return IngestResult(Outcome.REJECTED, uid, reason=reason, problem=Problem.OUT_OF_RESOURCES)


def _site(node: Node | None) -> str:
    return node.site if node else ""


def store_status(result: IngestResult) -> Stored:
    """The C-STORE response status for an ingest result, with an ErrorComment."""
    if result.outcome is Outcome.KEPT_EXISTING:
        return Stored(status.ELEMENTS_DISCARDED, "Duplicate UID, other content: kept first")
    if result.problem is not None:
        return Stored(status.FAILURE_STATUS[result.problem], status.error_comment(result.reason))
    return Stored(status.SUCCESS)


def _as_dataset(stored: Stored) -> Dataset:
    response = Dataset()
    response.Status = stored.status
    if stored.comment:
        response.ErrorComment = stored.comment
    return response
