"""Rendering benchmark: DICOMweb ``rendered`` / ``thumbnail`` of ``pacs serve`` against Orthanc.

Run from the repository root (about 3 minutes; the generated series are cached)::

    .venv/bin/python bench/render.py
    .venv/bin/python bench/render.py --no-orthanc --pools thread

What it does:

1. **data**: a 200-slice 512x512 signed 16-bit CT series (bench/ct_series.py, Explicit
   VR Little Endian, ~526 kB a slice) and one 1024x1024 8-bit XA cine of ``--xa-frames``
   frames (uncompressed), generated once under ``--cache``;
2. **the pipeline alone, in process** (the GIL measurement): the same slices rendered
   by :func:`viewer.render.render` one at a time, by a thread pool and by a process
   pool of one worker per core: images per second and the speed-up over one;
3. **over HTTP**: ``pacs import`` loads the files, then ``pacs serve`` runs once per
   worker-pool kind (``PACS_RENDER_POOL=thread`` / ``process``), and Orthanc (Debian's
   1.10 with its DICOMweb plugin, files uploaded over REST) gets the same files. One
   keep-alive connection each, Basic auth for ours:

   - *uncached*: ``/instances/{i}/rendered`` (JPEG, the server's defaults) of each of
     the 200 slices once: p50 / p95;
   - *cached*: the same 200 again: p50 (Orthanc has no rendered cache: its second pass);
   - *XA 1024*: ``/frames/{n}/rendered`` of every frame of the XA cine, uncached: p50;
   - *thumbnail*: ours ``/thumbnail?viewport=64,64``; Orthanc (no ``thumbnail`` in its
     plugin) ``/rendered?viewport=64,64``: p50 over the 200 slices, uncached;
   - *req/s, 8 clients*: 8 threads with a connection each share 200 uncached renders
     (``?quality=80``, a new cache key) and then repeat them cached;
   - *JPEG bytes per slice*: the mean size of the uncached answers: what crosses a
     provincial link for each slice.

Targets (this machine): uncached 512x512 p50 < 10 ms and no slower than Orthanc,
cached p50 < 3 ms. The output ends with a markdown table and PASS/FAIL lines.
Orthanc stretches each slice's full pixel range (it ignores the file's window);
ours applies the file's window, as a radiologist expects.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bench_path  # noqa: F401 - before viewer: see bench/bench_path.py
import numpy as np
import servers
from ct_series import ensure_series
from dicomweb_client import Client, basic_auth
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    XRayAngiographicImageStorage,
    generate_uid,
)

from viewer.render import RenderParams, render

BENCH_DIR = Path(__file__).resolve().parent
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
UNCACHED_TARGET_MS, CACHED_TARGET_MS = 10.0, 3.0
XA_SIZE = 1024
CLIENTS = 8


# --- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """One instance to request: its file and its DICOMweb path."""

    path: Path
    url: str  # /studies/{s}/series/{se}/instances/{i}
    frames: int


def images_of(paths: list[Path]) -> list[Image]:
    out = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        out.append(
            Image(
                path,
                f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}",
                int(ds.get("NumberOfFrames", 1) or 1),
            )
        )
    return out


def ensure_xa(cache: Path, frames: int) -> Path:
    """A 1024x1024 8-bit XA cine (uncompressed): a vessel tree filling with contrast."""
    folder = cache / f"xa-v1-{XA_SIZE}-{frames}"
    path = folder / "xa.dcm"
    if path.exists():
        return path
    print(f"generating a {frames}-frame {XA_SIZE}x{XA_SIZE} XA cine in {folder} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    axis = np.linspace(-1.0, 1.0, XA_SIZE, dtype=np.float32)
    x, y = np.meshgrid(axis, axis)
    background = 150 + 40 * np.exp(-(x**2 + y**2) * 2)
    vessels = np.zeros_like(x)
    for k in range(12):
        angle = k * np.pi / 6
        curve = np.abs(np.sin(3 * x + angle) * 0.6 - y + 0.1 * k - 0.6)
        vessels = np.maximum(vessels, np.exp(-((curve / 0.015) ** 2)))
    pixels = np.empty((frames, XA_SIZE, XA_SIZE), dtype=np.uint8)
    for index in range(frames):
        fill = np.sin(np.pi * (index + 1) / (frames + 1))
        frame = background - 110 * fill * vessels + rng.normal(0, 6, x.shape)
        pixels[index] = np.clip(frame, 0, 255).astype(np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Bench^XA", "BENCHXA"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "XA", 1, 1
    ds.StudyDate, ds.StudyTime = "20250314", "101500"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = XA_SIZE
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.NumberOfFrames = frames
    ds.FrameTime, ds.CineRate = "66.7", 15
    ds.WindowCenter, ds.WindowWidth = "128", "256"
    ds.PixelData = pixels.tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


# --- timings ----------------------------------------------------------------------------


@dataclass
class Series:
    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds) * 1000 if self.seconds else float("nan")

    @property
    def p95(self) -> float:
        if len(self.seconds) < 2:
            return self.p50
        return statistics.quantiles(self.seconds, n=20, method="inclusive")[18] * 1000


def timed(client: Client, paths: list[str]) -> Series:
    series = Series()
    for path in paths:
        status, body, seconds = client.get(path)
        if status != 200:
            series.errors.append(f"{status} {path}: {body[:160]!r}")
            continue
        series.seconds.append(seconds)
        series.sizes.append(len(body))
    return series


def throughput(make_client: Callable[[], Client], paths: list[str]) -> float:
    """Requests per second with ``CLIENTS`` clients sharing ``paths``."""
    clients = [make_client() for _ in range(CLIENTS)]
    for client in clients:  # connect first: the handshake is not the server's speed
        client.get("/")
    errors: list[str] = []

    def worker(index: int) -> None:
        for path in paths[index::CLIENTS]:
            status, body, _ = clients[index].get(path)
            if status != 200:
                errors.append(f"{status} {path}: {body[:160]!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return len(paths) / elapsed


@dataclass
class Result:
    label: str
    uncached: Series
    cached: Series
    xa: Series
    thumbnail: Series
    rps_uncached: float
    rps_cached: float


def measure(
    label: str,
    make_client: Callable[[], Client],
    root: str,
    ct: list[Image],
    xa: Image,
    *,
    ours: bool,
) -> Result:
    client = make_client()
    client.get("/")  # open the connection
    rendered = [f"{root}{image.url}/rendered" for image in ct]
    uncached = timed(client, rendered)
    cached = timed(client, rendered)
    frames = [f"{root}{xa.url}/frames/{n}/rendered" for n in range(1, xa.frames + 1)]
    xa_series = timed(client, frames)
    thumbs = [
        f"{root}{image.url}/{'thumbnail' if ours else 'rendered'}?viewport=64,64" for image in ct
    ]
    thumbnail = timed(client, thumbs)
    client.close()
    variant = [f"{path}?quality=80" for path in rendered]
    rps_uncached = throughput(make_client, variant)
    rps_cached = throughput(make_client, variant)
    for name, series in (
        ("uncached", uncached),
        ("cached", cached),
        ("xa", xa_series),
        ("thumbnail", thumbnail),
    ):
        if series.errors:
            raise SystemExit(
                f"{label} {name}: {len(series.errors)} errors, e.g. {series.errors[0]}"
            )
    result = Result(label, uncached, cached, xa_series, thumbnail, rps_uncached, rps_cached)
    print(
        f"  {label}: uncached p50 {uncached.p50:.2f} ms, cached p50 {cached.p50:.2f} ms, "
        f"XA p50 {xa_series.p50:.1f} ms, thumbnail p50 {thumbnail.p50:.2f} ms, "
        f"{rps_uncached:.0f} / {rps_cached:.0f} req/s",
        flush=True,
    )
    return result


# --- the pipeline alone: threads or processes? --------------------------------------------


def _render_one(path: Path) -> int:
    return len(render(path, RenderParams()).body)


def pool_speeds(paths: list[Path], workers: int) -> dict[str, float]:
    """Images per second: one at a time, a thread pool, a process pool."""
    for path in paths:  # the page cache warm for everyone
        path.read_bytes()
    started = time.perf_counter()
    for path in paths:
        _render_one(path)
    speeds = {"one at a time": len(paths) / (time.perf_counter() - started)}
    context = multiprocessing.get_context("forkserver")
    executors: dict[str, Callable[[], Executor]] = {
        f"{workers} threads": lambda: ThreadPoolExecutor(workers),
        f"{workers} processes": lambda: ProcessPoolExecutor(workers, mp_context=context),
    }
    for name, make in executors.items():
        with make() as executor:
            list(executor.map(_render_one, paths[:workers]))  # start the workers
            started = time.perf_counter()
            list(executor.map(_render_one, paths))
            speeds[name] = len(paths) / (time.perf_counter() - started)
    return speeds


# --- servers ---------------------------------------------------------------------------------


def import_into(run_dir: Path, database_url: str, files: list[Path]) -> None:
    env = servers.pacs_env(run_dir, database_url, 0, 0)
    pacs = Path(sys.executable).with_name("pacs")
    started = time.perf_counter()
    done = subprocess.run(
        [str(pacs), "import", *map(str, files)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"pacs import failed:\n{done.stdout}\n{done.stderr}")
    print(f"  imported into ours in {time.perf_counter() - started:.1f} s", flush=True)


@contextmanager
def ours(run_dir: Path, database_url: str, pool: str) -> Iterator[servers.Running]:
    saved = os.environ.get("PACS_RENDER_POOL")
    os.environ["PACS_RENDER_POOL"] = pool
    try:
        with servers.ours(run_dir, database_url) as server:
            yield server
    finally:
        if saved is None:
            os.environ.pop("PACS_RENDER_POOL", None)
        else:
            os.environ["PACS_RENDER_POOL"] = saved


def upload_to_orthanc(base: str, files: list[Path]) -> None:
    started = time.perf_counter()
    for path in files:
        request = urllib.request.Request(
            f"{base}/instances",
            data=path.read_bytes(),
            method="POST",
            headers={"Content-Type": "application/dicom"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            json.load(response)
    print(f"  uploaded into Orthanc in {time.perf_counter() - started:.1f} s", flush=True)


def orthanc_version() -> str:
    try:
        out = subprocess.run(
            [servers.orthanc_executable(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
        plugin = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return f"{out[0].split()[-1] if out else '?'}, DICOMweb plugin {plugin or '?'}"
    except (OSError, subprocess.SubprocessError):
        return "?"


# --- report ------------------------------------------------------------------------------------


def report(results: list[Result], speeds: dict[str, float], args: argparse.Namespace) -> bool:
    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. CT {args.slices} slices 512x512 16-bit; "
        f"XA {XA_SIZE}x{XA_SIZE} 8-bit, {args.xa_frames} frames."
    )
    if any(r.label == "Orthanc" for r in results):
        print(f"Orthanc: {orthanc_version()}.")
    print()
    print("The pipeline alone (viewer.render.render of the CT slices, JPEG, in process):")
    print()
    print("| workers | images/s | speed-up |")
    print("|---|---:|---:|")
    base = speeds["one at a time"]
    for name, speed in speeds.items():
        print(f"| {name} | {speed:.0f} | {speed / base:.2f}x |")
    print()
    header = [r.label for r in results]
    orthanc = next((r for r in results if r.label == "Orthanc"), None)
    ours_results = [r for r in results if r.label != "Orthanc"]
    columns = " | ".join(header)
    ratio_head = " | " + " | ".join(f"Orthanc ÷ {r.label}" for r in ours_results) if orthanc else ""
    print(f"| over HTTP, one keep-alive connection | {columns}{ratio_head} |")
    print("|---" + "|---:" * (len(header) + (len(ours_results) if orthanc else 0)) + "|")
    rows: list[tuple[str, Callable[[Result], float], bool]] = [
        ("uncached 512x512 JPEG p50 (ms)", lambda r: r.uncached.p50, True),
        ("uncached 512x512 JPEG p95 (ms)", lambda r: r.uncached.p95, True),
        ("cached 512x512 JPEG p50 (ms)", lambda r: r.cached.p50, True),
        ("1024x1024 XA frame p50 (ms)", lambda r: r.xa.p50, True),
        ("64-px thumbnail p50 (ms)", lambda r: r.thumbnail.p50, True),
        (f"req/s, {CLIENTS} clients, uncached", lambda r: r.rps_uncached, False),
        (f"req/s, {CLIENTS} clients, cached", lambda r: r.rps_cached, False),
        (
            "JPEG bytes per slice (default quality)",
            lambda r: statistics.fmean(r.uncached.sizes),
            False,
        ),
    ]
    for title, value, lower_is_better in rows:
        cells = [f"{value(r):.2f}" if value(r) < 100 else f"{value(r):.0f}" for r in results]
        ratios = ""
        if orthanc:
            if title.startswith("JPEG bytes"):
                ratios = " | " + " | ".join(
                    f"{value(orthanc) / value(r):.2f}" for r in ours_results
                )
            elif lower_is_better:
                ratios = " | " + " | ".join(
                    f"{value(orthanc) / value(r):.2f}x" for r in ours_results
                )
            else:
                ratios = " | " + " | ".join(
                    f"{value(r) / value(orthanc):.2f}x (ours ÷ Orthanc)" for r in ours_results
                )
        print(f"| {title} | {' | '.join(cells)}{ratios} |")
    print()
    ok = True
    for r in ours_results:
        checks = [
            (
                f"{r.label}: uncached p50 {r.uncached.p50:.2f} ms < {UNCACHED_TARGET_MS} ms",
                r.uncached.p50 < UNCACHED_TARGET_MS,
            ),
            (
                f"{r.label}: cached p50 {r.cached.p50:.2f} ms < {CACHED_TARGET_MS} ms",
                r.cached.p50 < CACHED_TARGET_MS,
            ),
        ]
        if orthanc:
            checks.append(
                (
                    f"{r.label}: uncached p50 {r.uncached.p50:.2f} ms <= Orthanc's "
                    f"{orthanc.uncached.p50:.2f} ms",
                    r.uncached.p50 <= orthanc.uncached.p50,
                )
            )
        for text, passed in checks:
            print(f"{'PASS' if passed else 'FAIL'}  {text}")
            ok = ok and passed
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--slices", type=int, default=200, help="CT slices (200)")
    parser.add_argument("--xa-frames", type=int, default=15, help="frames of the XA cine (15)")
    parser.add_argument("--pools", default="thread,process", help="our pool kinds to run")
    parser.add_argument("--no-orthanc", action="store_true", help="measure ours only")
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    args = parser.parse_args()
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    series = ensure_series(cache, "s0", args.slices, 0)
    xa_path = ensure_xa(cache, args.xa_frames)
    ct_files = sorted(series.folder.glob("*.dcm"))
    ct, [xa] = images_of(ct_files), images_of([xa_path])
    workers = os.cpu_count() or 1
    print(f"rendering {len(ct)} slices in process ...", flush=True)
    speeds = pool_speeds(ct_files, workers)
    run_dir = cache / "runs" / f"render-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    results: list[Result] = []
    try:
        database_url = f"sqlite:///{run_dir / 'data' / 'index.sqlite'}"
        import_into(run_dir, database_url, [*ct_files, xa_path])
        auth = basic_auth("admin", servers.ADMIN_PASSWORD)
        for pool in [p.strip() for p in args.pools.split(",") if p.strip()]:
            with ours(run_dir, database_url, pool) as server:
                base = server.base_url
                results.append(
                    measure(
                        f"ours ({pool} pool)",
                        lambda base=base: Client(base, {"Accept": "image/jpeg", **auth}),
                        "/dicomweb",
                        ct,
                        xa,
                        ours=True,
                    )
                )
        if not args.no_orthanc:
            if not Path(DICOMWEB_PLUGIN).exists():
                raise SystemExit(f"{DICOMWEB_PLUGIN} missing: apt-get install -y orthanc-dicomweb")
            extra = {
                "Plugins": [DICOMWEB_PLUGIN],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
            (run_dir / "orthanc").mkdir()
            with servers.orthanc(run_dir / "orthanc", extra) as server:
                base = server.base_url
                upload_to_orthanc(base, [*ct_files, xa_path])
                results.append(
                    measure(
                        "Orthanc",
                        lambda base=base: Client(base, {"Accept": "image/jpeg"}),
                        "/dicom-web",
                        ct,
                        xa,
                        ours=False,
                    )
                )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    ok = report(results, speeds, args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
