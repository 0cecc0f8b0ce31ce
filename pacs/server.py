"""``pacs serve``: the DICOM listener and the HTTP server in one process.

``--only dicom`` / ``--only http`` run one side, so each can be scaled on its own
machine against a shared index and blob store.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from datetime import timedelta
from typing import Literal

import uvicorn

from api.app import create_app
from pacs.bootstrap import archive_from_settings, ensure_first_admin
from pacs.forward import Forwarder
from pacs.scp import start_dicom_server
from pacs.settings import Settings
from storage.database import refresh_statistics

log = logging.getLogger(__name__)
Only = Literal["dicom", "http"] | None


def serve(settings: Settings, only: Only = None) -> None:
    archive = archive_from_settings(settings, create_schema=True)
    refresh_statistics(archive.sessions.kw["bind"])
    archive.blobs.clear_staging(older_than=timedelta(hours=1))
    if recovered := archive.recover_pending():
        log.warning("indexed %d instances stored just before a crash", recovered)
    password = ensure_first_admin(archive, settings)
    if password:
        print(
            f"Created user 'admin' with password: {password}\n(shown once; change it with "
            "`pacs user passwd admin`)",
            flush=True,
        )
    dicom = start_dicom_server(archive, settings) if only in (None, "dicom") else []
    # Forwarding is DICOM work: it runs beside the listener, not in an HTTP-only process.
    forwards = only in (None, "dicom") and settings.forward_workers > 0
    forwarder = Forwarder(archive, settings) if forwards else None
    if forwarder is not None:
        forwarder.start()
    try:
        app = create_app(archive, settings) if only in (None, "http") else None
        _freeze_startup_objects()
        if app is not None:
            # uvicorn shuts down on SIGTERM, then raises it again: with the default
            # handler that would end the process before the clean-up below.
            signal.signal(signal.SIGTERM, _exit)
            uvicorn.run(
                app,
                host=settings.http_host,
                port=settings.http_port,
                log_level="info",
                access_log=settings.access_log,
                # HTTPS on the same port when a certificate is configured.
                ssl_certfile=settings.https_cert_file,
                ssl_keyfile=settings.https_key_file,
            )
        else:
            _wait_for_signal()
    finally:
        if forwarder is not None:
            forwarder.stop()
        for listener in dicom:
            listener.shutdown()


def _freeze_startup_objects() -> None:
    """Keep what start-up built (modules, DICOM dictionaries, SQLAlchemy mappers:
    ~200,000 objects) out of the cyclic garbage collector's full collections.

    Otherwise every full collection walks all of them: ~100 ms with the process
    stopped, often enough to land in the 95th percentile of a QIDO request or in
    the middle of a C-STORE. They live as long as the process anyway.
    """
    gc.collect()
    gc.freeze()


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
