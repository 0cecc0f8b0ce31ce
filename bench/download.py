"""Study download as ZIP + DICOMDIR: throughput and the server's memory.

Run from the repository root (the 1,000-slice series is generated once, ~500 MB)::

    .venv/bin/python bench/download.py [--slices 1000] [--runs 3]

What it does: ``pacs import`` loads a generated 512x512 CT series (bench/ct_series.py,
~526 kB a slice) into a fresh data folder, ``pacs serve`` starts on it, and
``GET /api/studies/{study}/download`` is read to the end ``--runs`` times over one
connection, 1 MB at a time, the bytes thrown away. For each run it prints the time to
the first byte (the instances stream first, the DICOMDIR comes last), the total time and
MB/s; a thread samples the server's resident memory every 10 ms, and the peak over
the runs is printed beside the RSS before the first download. As the disk's own
speed, the same files are read sequentially in this process (page cache warm, as
for the downloads). Targets: near disk speed, and a peak RSS growth far below the
study's size (flat memory: the ZIP is streamed, never built).
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import servers
from ct_series import ensure_series
from pydicom import dcmread

BENCH_DIR = Path(__file__).resolve().parent
CHUNK = 1024 * 1024
MB = 1024 * 1024


class PeakRss:
    """The highest resident set size of a process while the sampler runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)


def read_files(files: list[Path]) -> float:
    """Seconds to read every file sequentially, 1 MB at a time."""
    started = time.perf_counter()
    for path in files:
        with path.open("rb") as fh:
            while fh.read(CHUNK):
                pass
    return time.perf_counter() - started


def download(url: str) -> tuple[int, float, float]:
    """(bytes, seconds to the first byte, total seconds)."""
    token = base64.b64encode(f"admin:{servers.ADMIN_PASSWORD}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    started = time.perf_counter()
    first = 0.0
    total = 0
    with urllib.request.urlopen(request, timeout=600) as response:
        while chunk := response.read(CHUNK):
            if not total:
                first = time.perf_counter() - started
            total += len(chunk)
    return total, first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    args = parser.parse_args()

    series = ensure_series(args.cache, "s0", args.slices, 0)
    files = sorted(series.folder.glob("*.dcm"))
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    run_dir = args.cache / "runs" / time.strftime("download-%Y%m%d-%H%M%S")
    database_url = f"sqlite:///{run_dir / 'data' / 'index.sqlite'}"
    env = servers.pacs_env(run_dir, database_url, servers.free_port(), servers.free_port())
    print(f"importing {len(files)} files ({series.total_bytes / MB:.0f} MB) ...", flush=True)
    run_dir.mkdir(parents=True)
    with (run_dir / "import.log").open("wb") as log:
        subprocess.run(
            [str(BENCH_DIR.parent / ".venv" / "bin" / "pacs"), "import", *map(str, files)],
            env=env,
            check=True,
            stdout=log,
            stderr=log,
        )
    disk_seconds = read_files(files)
    disk_mb_s = series.total_bytes / MB / disk_seconds

    with servers.ours(run_dir, database_url) as server:
        url = f"{server.base_url}/api/studies/{study}/download"
        rss_before = psutil.Process(server.pid).memory_info().rss
        rows = []
        with PeakRss(server.pid) as peak:
            for _ in range(args.runs):
                rows.append(download(url))
    shutil.rmtree(run_dir / "data")  # the copy of the study; the logs stay
    print(f"\nstudy: {len(files)} slices, {series.total_bytes / MB:.0f} MB of DICOM files")
    print("| run | ZIP MB | first byte s | total s | MB/s |\n|---|---|---|---|---|")
    speeds = []
    for number, (size, first, total) in enumerate(rows, start=1):
        speeds.append(size / MB / total)
        print(f"| {number} | {size / MB:.0f} | {first:.2f} | {total:.2f} | {speeds[-1]:.0f} |")
    print(f"\nmedian download: {statistics.median(speeds):.0f} MB/s")
    print(f"disk (sequential read, page cache warm): {disk_mb_s:.0f} MB/s")
    growth = (peak.peak - rss_before) / MB
    print(
        f"server RSS: {rss_before / MB:.0f} MB before, peak {peak.peak / MB:.0f} MB "
        f"(+{growth:.0f} MB for a {series.total_bytes / MB:.0f} MB study)"
    )


if __name__ == "__main__":
    main()
