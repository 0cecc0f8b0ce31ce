"""Exchange benchmark: C-MOVE of a CT series from ``pacs serve`` and from Orthanc into
the same DCMTK ``storescp``, in the same run.

Run from the repository root::

    .venv/bin/python bench/exchange.py              # 1,000 slices, 3 runs each
    .venv/bin/python bench/exchange.py --slices 200 --runs 2
    .venv/bin/python bench/exchange.py --profile bench/.cache/runs/move.txt

What it does:

1. generates (once, cached) a ``--slices``-slice CT series (bench/ct_series.py,
   512x512, ~526 kB a slice, Explicit VR Little Endian);
2. starts one DCMTK ``storescp`` (``TCP_NODELAY=1``, ``--max-pdu 131072``, writing
   to a folder emptied before each run), ``pacs serve`` (SQLite) and Orthanc 1.10
   (default SQLite index, ``storescp`` declared in ``DicomModalities``);
3. loads the series into both with ``storescu`` and registers ``storescp`` as a
   node of ours (``/api/nodes``);
4. runs ``movescu`` (``TCP_NODELAY=1``) against each archive in turn, ``--runs``
   times, alternating; a run is timed from the C-MOVE request to the final
   response, and counts only if ``storescp`` holds every instance afterwards;
5. prints instances/s and the sender's CPU seconds per 1,000 instances (psutil,
   user + system) per run, the medians per archive and the ratio ours / Orthanc
   (target >= 1.0), and a markdown table. The CPU figure says more than the rate
   on a busy machine: the rate moves with whatever else runs there.

``--profile FILE`` records our server with py-spy (raw collapsed stacks) during one
extra C-MOVE after the timed runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from json import dumps
from pathlib import Path

import psutil
from ct_series import CtSeries, ensure_series
from pydicom import dcmread
from servers import ADMIN_PASSWORD, Running, free_port, nodelay_env, orthanc, ours

BENCH_DIR = Path(__file__).resolve().parent
STORESCP_AE = "STORESCP"
MAX_PDU = 131072  # DCMTK's largest; the same for both senders


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    series = ensure_series(args.cache, "exchange", args.slices, 0)
    header = dcmread(next(series.folder.glob("*.dcm")), stop_before_pixels=True)
    study, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    run_dir = Path(tempfile.mkdtemp(prefix="exchange-", dir=args.cache))
    print(f"series: {series.files} slices, {series.total_bytes / 1e6:.0f} MB; run in {run_dir}")
    try:
        with _storescp(run_dir) as (port, received):
            modality = {"storescp": [STORESCP_AE, "127.0.0.1", port]}
            for side in ("ours", "orthanc"):
                (run_dir / side).mkdir()
            with (
                ours(run_dir / "ours", f"sqlite:///{run_dir / 'ours' / 'index.sqlite'}") as us,
                orthanc(
                    run_dir / "orthanc", {"DicomModalities": modality, "DicomAlwaysAllowMove": True}
                ) as them,
            ):
                for server in (us, them):
                    _load(server, series, run_dir)
                _register_node(us, port)
                rates: dict[str, list[float]] = {us.label: [], them.label: []}
                cpu: dict[str, list[float]] = {us.label: [], them.label: []}
                for attempt in range(args.runs):
                    for server in (us, them):
                        process = psutil.Process(server.pid)
                        before = _cpu_seconds(process)
                        seconds = _move(server, study, series_uid, received, series.files)
                        per_1000 = (_cpu_seconds(process) - before) / series.files * 1000
                        rate = series.files / seconds
                        rates[server.label].append(rate)
                        cpu[server.label].append(per_1000)
                        print(f"run {attempt + 1} {server.label:8} {seconds:6.2f} s "
                              f"{rate:7.1f} instances/s {per_1000:5.2f} CPU-s/1000")  # fmt: skip
                if args.profile:
                    _profile(us, study, series_uid, received, series.files, args.profile)
        _report(rates, cpu, series)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=1000, help="slices in the series")
    parser.add_argument("--runs", type=int, default=3, help="timed C-MOVEs per archive")
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    parser.add_argument("--profile", type=Path, help="py-spy raw output for one more move")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    return parser.parse_args(argv)


@contextmanager
def _storescp(run_dir: Path) -> Iterator[tuple[int, Path]]:
    """A DCMTK storescp on a free port; yields (port, folder it writes to)."""
    port = free_port()
    received = run_dir / "received"
    received.mkdir(parents=True)
    command = [_tool("storescp"), "--max-pdu", str(MAX_PDU), "-aet", STORESCP_AE,
               "-od", str(received), str(port)]  # fmt: skip
    with (run_dir / "storescp.log").open("wb") as log:
        proc = subprocess.Popen(command, env=nodelay_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited: {(run_dir / 'storescp.log').read_text()}")
        yield port, received
    finally:
        proc.terminate()
        proc.wait(10)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed (apt-get install dcmtk)")
    return found


def _load(server: Running, series: CtSeries, run_dir: Path) -> None:
    started = time.perf_counter()
    command = [_tool("storescu"), "-aec", server.ae_title, "+sd", "+sp", "*.dcm",
               "127.0.0.1", str(server.dicom_port), str(series.folder)]  # fmt: skip
    done = subprocess.run(command, env=nodelay_env(), capture_output=True, text=True)
    if done.returncode != 0 or server.count() < series.files:
        raise RuntimeError(f"loading {server.label} failed: {done.stderr[-2000:]}")
    print(f"loaded {server.label} in {time.perf_counter() - started:.1f} s")


def _register_node(server: Running, port: int) -> None:
    body = dumps({"name": "storescp", "ae_title": STORESCP_AE, "host": "127.0.0.1", "port": port})
    request = urllib.request.Request(
        f"{server.base_url}/api/nodes",
        data=body.encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201


def _move(server: Running, study: str, series: str, received: Path, expected: int) -> float:
    """One timed C-MOVE of the series into storescp; seconds."""
    for item in received.iterdir():
        item.unlink()
    keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}"]
    command = [_tool("movescu"), "-S", "-aec", server.ae_title, "-aem", STORESCP_AE]
    command += [arg for key in keys for arg in ("-k", key)]
    command += ["127.0.0.1", str(server.dicom_port)]
    started = time.perf_counter()
    done = subprocess.run(command, env=nodelay_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    got = sum(1 for _ in received.iterdir())
    if done.returncode != 0 or got != expected:
        raise RuntimeError(f"{server.label}: {got}/{expected} received\n{done.stderr[-2000:]}")
    return seconds


def _profile(
    server: Running, study: str, series: str, received: Path, expected: int, out: Path
) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen(
        [spy, "record", "-p", str(server.pid), "-f", "raw", "-o", str(out), "-r", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    _move(server, study, series, received, expected)
    recorder.send_signal(2)
    recorder.wait(30)
    print(f"profile written to {out}")


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _report(rates: dict[str, list[float]], cpu: dict[str, list[float]], series: CtSeries) -> None:
    ours_median = statistics.median(rates["ours"])
    theirs_median = statistics.median(rates["orthanc"])
    ratio = ours_median / theirs_median
    print(f"\nmedian: ours {ours_median:.1f} instances/s, Orthanc {theirs_median:.1f}; "
          f"ratio {ratio:.2f} (target >= 1.0)")  # fmt: skip
    print(f"\n| C-MOVE of {series.files} CT slices into storescp | instances/s (median) "
          "| sender CPU-s per 1000 (median) |")  # fmt: skip
    print("|---|---:|---:|")
    for label, name in (("ours", "pacs serve"), ("orthanc", "Orthanc 1.10")):
        print(f"| {name} | {statistics.median(rates[label]):.1f} "
              f"| {statistics.median(cpu[label]):.2f} |")  # fmt: skip
    print(f"| ratio ours / Orthanc | {ratio:.2f} | |")


if __name__ == "__main__":
    sys.exit(main())
