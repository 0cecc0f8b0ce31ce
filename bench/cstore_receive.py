"""What receiving a C-STORE costs before any archiving: pynetdicom against the lean SCP.

Run from the repository root: ``.venv/bin/python bench/cstore_receive.py [--slices 200]
[--repeat 3]``.

Both servers run in this process. In the plain rows they do nothing with what they
receive but delete it: the measurement is the DICOM upper layer alone; in the
``+ archive`` rows each file goes through :meth:`storage.Archive.ingest` into a
fresh SQLite archive, as ``pacs serve`` does. ``pynetdicom`` is an AE
configured as ``pacs.scp`` configures it (chunked receive into a file, 4 MB PDU,
every storage class); ``lean`` is :mod:`pacs.store_scp` behind
:class:`pacs.listener.RoutingRequestHandler`. DCMTK's ``storescu`` (Nagle off)
pushes the generated 512x512 CT series over one association; the table gives the
median instances per second and the CPU seconds per 1,000 instances of this
process.

This is the measurement behind hand-writing the storage receive path: a
pynetdicom SCP that does nothing tops out near the rate Orthanc archives at.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ct_series import ensure_series
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from servers import free_port, nodelay_env

from pacs.listener import LeanStorage, start_server
from pacs.store_scp import Caller, OpenStore, Received, Stored, StoreHandler
from storage import Archive, Source, open_archive
from storage.blobs import staging_tempdir
from storage.database import upgrade

BENCH_DIR = Path(__file__).resolve().parent
KINDS = ("pynetdicom", "lean", "pynetdicom + archive", "lean + archive")
TMP = tempfile.gettempdir()  # start() points tempfile at each run's staging folder


def _null_pynetdicom(event: evt.Event) -> int:
    Path(event.dataset_path).unlink(missing_ok=True)
    return 0x0000


def _null_lean(caller: Caller) -> StoreHandler:
    def store(received: Received) -> Stored:
        received.path.unlink(missing_ok=True)
        return Stored(0x0000)

    return store


def _archiving(archive: Archive) -> tuple[Callable[[evt.Event], int], OpenStore]:
    def pynetdicom_store(event: evt.Event) -> int:
        result = archive.ingest(Path(event.dataset_path), Source(), move=True)
        return 0x0000 if result.problem is None else 0xC000

    def lean_store(caller: Caller) -> StoreHandler:
        def store(received: Received) -> Stored:
            source = Source(ae_title=caller.ae_title)
            result = archive.ingest(received.path, source, move=True, sha256=received.sha256)
            return Stored(0x0000 if result.problem is None else 0xC000)

        return store

    return pynetdicom_store, lean_store


def start(kind: str, port: int, folder: Path) -> ThreadedAssociationServer:
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    on_pynetdicom, on_lean = _null_pynetdicom, _null_lean
    staging = folder
    if kind.endswith("+ archive"):
        archive = open_archive(f"sqlite:///{folder / 'index.sqlite'}", (folder / "blobs").as_uri())
        upgrade(archive.sessions.kw["bind"])
        on_pynetdicom, on_lean = _archiving(archive)
        staging = Path(staging_tempdir(archive.blobs))
    tempfile.tempdir = str(staging)
    ae = AE("PACS")
    ae.maximum_pdu_size = 4 * 1024 * 1024
    ae.add_supported_context(Verification, AllTransferSyntaxes)
    lean = LeanStorage(
        ae_title="PACS",
        max_pdu=4 * 1024 * 1024,
        max_associations=8,
        network_timeout=60,
        staging=staging,
        open_store=on_lean,
    )
    handlers = [(evt.EVT_C_STORE, on_pynetdicom)]
    use_lean = kind.startswith("lean")
    return start_server(ae, ("127.0.0.1", port), handlers, lean if use_lean else None)


def push(port: int, folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", "PACS", "+sd", "+sp", "*.dcm", "127.0.0.1", str(port), str(folder)],
        check=True,
        env=nodelay_env(),
        capture_output=True,
    )
    return time.perf_counter() - started


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(kind: str, folder: Path, count: int, repeat: int) -> tuple[float, float]:
    """Median inst/s and CPU-s/1000 over ``repeat`` pushes, each into a fresh server
    (so no push meets its own duplicates)."""
    rates, cpus = [], []
    for _ in range(repeat):
        work = Path(tempfile.mkdtemp(prefix="cstore-", dir=TMP))
        port = free_port()
        server = start(kind, port, work)
        try:
            before = cpu_seconds()
            seconds = push(port, folder)
            cpus.append((cpu_seconds() - before) / count * 1000)
            rates.append(count / seconds)
        finally:
            server.shutdown()
            shutil.rmtree(work, ignore_errors=True)
    return statistics.median(rates), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which rows to run")
    args = parser.parse_args()
    series = ensure_series(args.cache, "s0", args.slices, 0)
    runs: dict[str, Callable[[], tuple[float, float]]] = {
        kind: (lambda kind=kind: measure(kind, series.folder, series.files, args.repeat))
        for kind in args.kinds.split(",")
    }
    results = {kind: run() for kind, run in runs.items()}
    print(f"\n{series.files} x 512x512 CT over one association, median of {args.repeat}\n")
    print("| receive path | inst/s | CPU-s/1000 |")
    print("|---|---:|---:|")
    for kind, (rate, cpu) in results.items():
        print(f"| {kind} | {rate:.0f} | {cpu:.2f} |")
    for suffix in ("", " + archive"):
        if f"lean{suffix}" not in results or f"pynetdicom{suffix}" not in results:
            continue
        ratio = results[f"lean{suffix}"][0] / results[f"pynetdicom{suffix}"][0]
        print(f"lean{suffix} / pynetdicom{suffix}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
