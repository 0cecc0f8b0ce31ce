"""DICOMweb benchmark: QIDO-RS and series metadata of ``pacs serve``, against Orthanc.

Run from the repository root::

    .venv/bin/python bench/dicomweb.py            # full run, ~5 min (+2 min seeding once)
    .venv/bin/python bench/dicomweb.py --quick    # 200 studies / 20k instances, 20 requests
    .venv/bin/python bench/dicomweb.py --studies 10000 --instances 1000000 --requests 200

What it does:

1. **seeds an index** of ``--studies`` studies / ``--instances`` instances straight
   through ``storage/`` (bench/qido_seed.py: Vietnamese names at real frequencies,
   with and without accents, ``patient_name_key = search_key(name)``; study dates
   2015-2024; CT/MR/CR/US/XA studies, some mixed; accession numbers). The template
   is cached under ``--cache`` and copied per run;
2. **pushes** a generated ``--slices``-slice CT series (bench/ct_series.py, 512x512,
   ~526 kB a slice) into it with ``storescu`` (C-STORE, the same ingest door as
   everything else), so series metadata reads real files;
3. **times QIDO-RS** over HTTP with Basic auth on one keep-alive connection, the way
   OHIF's study list asks (``limit=101&offset=0&includefield=00081030,00080060``):
   PatientName prefix (``nguy*``, a quarter with accents), fuzzy PatientName
   (``fuzzymatching=true``, a whole name word), StudyDate range (1 day to 6 months),
   ModalitiesInStudy, and ``/studies/{uid}/series`` of random studies;
   ``--requests`` each, values from a fixed seed, p50 / p95 reported;
4. **times series metadata** of the CT series: *cold* is the first metadata request
   after a server restart (one QIDO request first, as OHIF's study list would, so
   login and imports are not counted; the OS page cache stays warm), median over
   ``--restarts`` restarts; *warm* is the median of ``--warm`` repeats;
5. **compares with Orthanc** (Debian's 1.10 with its DICOMweb plugin, default
   SQLite index, ``QidoCaseSensitive: false``): a subset of the seeded index
   (``--subset-studies`` studies sampled from it, up to ``--subset-series`` series
   of ``--subset-per-series`` small instances, bench/qido_subset.py) plus the same
   CT series, pushed into Orthanc *and into a fresh ``pacs serve``* with
   ``storescu``, then the same queries; the ratio is Orthanc / ours on that same data.

Targets (SQLite, this machine): every QIDO p95 < 50 ms on the full index; series
metadata < 500 ms cold and < 50 ms warm. The output ends with a markdown table.
``--profile DIR`` adds a py-spy pass over our server (QIDO and cold metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspy_profile
import qido_seed
import servers
from ct_series import CtSeries, ensure_series
from dicomweb_client import Client, Kind, Timings, basic_auth, query_kinds, time_kind
from index_seed import SqliteDatabases
from push import push
from pydicom import dcmread
from qido_subset import Subset, ensure_subset

BENCH_DIR = Path(__file__).resolve().parent
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
QIDO_TARGET_MS, COLD_TARGET_MS, WARM_TARGET_MS = 50.0, 500.0, 50.0
WARM_BUDGET_SECONDS = 90.0
PYSPY_ATTACH_SECONDS = 1.0
FULL, SUBSET, ORTHANC = "full", "subset", "orthanc"

DEFAULTS = {
    "studies": 10_000,
    "instances": 1_000_000,
    "requests": 200,
    "slices": 1000,
    "restarts": 5,
    "warm": 50,
    "subset_studies": 2000,
}
QUICK = {
    "studies": 200,
    "instances": 20_000,
    "requests": 20,
    "slices": 200,
    "restarts": 2,
    "warm": 10,
    "subset_studies": 100,
}


@dataclass(frozen=True)
class Target:
    """A server to measure: how to start it (on data already loaded) and ask it."""

    label: str
    start: Callable[[], AbstractContextManager[servers.Running]]
    root: str
    headers: dict[str, str]


@dataclass
class Measured:
    qido: dict[str, Timings] = field(default_factory=dict)
    cold: Timings = field(default_factory=Timings)
    warm: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class Series:
    """The CT series pushed everywhere, and where its metadata lives."""

    files: CtSeries
    study: str
    series: str

    def metadata_path(self, root: str) -> str:
        return f"{root}/studies/{self.study}/series/{self.series}/metadata"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    servers.exit_on_sigterm()
    started = time.monotonic()
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    template = qido_seed.template(cache, args.studies, args.instances)
    series = _ct_series(cache, args.slices)
    results: dict[str, Measured] = {}
    results[FULL] = _run_full(args, cache, template, series)
    if not args.no_subset:
        subset = ensure_subset(cache, template, args.subset_studies, args.subset_series, 1)
        results[SUBSET] = _run_subset(args, cache, subset, series, orthanc=False)
        if not args.no_orthanc:
            results[ORTHANC] = _run_subset(args, cache, subset, series, orthanc=True)
    print()
    print(_report(args, results, time.monotonic() - started))
    return 0


def index_parser(description: str | None, quick: dict[str, int]) -> argparse.ArgumentParser:
    """The options of a benchmark over the seeded QIDO index: ``--quick`` and the
    index size and request count it shrinks (see :func:`with_defaults`)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"small debug run: {quick}")
    parser.add_argument("--studies", type=int, help="studies in the seeded index (10000)")
    parser.add_argument("--instances", type=int, help="instances in the seeded index (1e6)")
    parser.add_argument("--requests", type=int, help="requests per query kind and user (200)")
    return parser


def with_defaults(
    args: argparse.Namespace, defaults: dict[str, int], quick: dict[str, int]
) -> argparse.Namespace:
    """Options not given take their ``--quick`` or full-run value."""
    for name, full in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick[name] if args.quick else full)
    return args


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = index_parser(__doc__, QUICK)
    parser.add_argument("--slices", type=int, help="instances of the metadata series (1000)")
    parser.add_argument("--restarts", type=int, help="server restarts for cold metadata (5)")
    parser.add_argument("--warm", type=int, help="repeats for warm metadata (50)")
    parser.add_argument("--subset-studies", type=int, help="studies in the Orthanc subset (2000)")
    parser.add_argument("--subset-series", type=int, default=3, help="series per subset study")
    parser.add_argument("--no-orthanc", action="store_true", help="measure ours only")
    parser.add_argument("--no-subset", action="store_true", help="no subset runs (no Orthanc)")
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    parser.add_argument("--keep-runs", action="store_true", help="keep run folders and logs")
    parser.add_argument("--profile", type=Path, help="py-spy our server into this folder")
    return with_defaults(parser.parse_args(argv), DEFAULTS, QUICK)


def _ct_series(cache: Path, slices: int) -> Series:
    files = ensure_series(cache, "s0", slices, 0)
    first = dcmread(next(files.folder.glob("*.dcm")), stop_before_pixels=True)
    return Series(files, str(first.StudyInstanceUID), str(first.SeriesInstanceUID))


# --- the runs -----------------------------------------------------------------------


def _run_full(args: argparse.Namespace, cache: Path, template: Path, series: Series) -> Measured:
    """Ours on the seeded index plus the CT series."""
    run_dir = fresh_run_dir(cache, "dicomweb-full")
    url = SqliteDatabases(cache).create("full", run_dir / "data", str(template))
    target = _ours_target(FULL, run_dir, url)
    uids = qido_seed.study_uids(template, args.requests, random.Random(3))
    kinds = query_kinds(args.requests, uids)
    _load(target, [series.files], run_dir)
    measured = _measure(args, target, kinds, series)
    if args.profile:
        _profile(args, target, kinds, series)
    _done(args, run_dir)
    return measured


def _run_subset(
    args: argparse.Namespace, cache: Path, subset: Subset, series: Series, *, orthanc: bool
) -> Measured:
    """Ours (fresh) or Orthanc with the subset and the CT series pushed over DICOM."""
    label = ORTHANC if orthanc else SUBSET
    run_dir = fresh_run_dir(cache, f"dicomweb-{label}")
    if orthanc:
        target = _orthanc_target(run_dir)
    else:
        url = SqliteDatabases(cache).create(label, run_dir / "data", None)
        target = _ours_target(SUBSET, run_dir, url)
    folders = [_as_series(shard) for shard in subset.shards]
    _load(target, [*folders, series.files], run_dir)
    kinds = query_kinds(args.requests, subset.study_uids)
    measured = _measure(args, target, kinds, series)
    _done(args, run_dir)
    return measured


def _ours_target(label: str, run_dir: Path, url: str) -> Target:
    headers = basic_auth("admin", servers.ADMIN_PASSWORD)
    return Target(label, lambda: servers.ours(run_dir, url), "/dicomweb", headers)


def _orthanc_target(run_dir: Path) -> Target:
    if not Path(DICOMWEB_PLUGIN).exists():
        raise SystemExit(f"{DICOMWEB_PLUGIN} missing: apt-get install -y orthanc-dicomweb")
    extra: dict[str, object] = {
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "QidoCaseSensitive": False},
    }

    @contextmanager
    def start() -> Iterator[servers.Running]:
        with servers.orthanc(run_dir, extra) as server:
            yield server

    return Target(ORTHANC, start, "/dicom-web", {})


def _as_series(folder: Path) -> CtSeries:
    files = list(folder.glob("*.dcm"))
    return CtSeries(folder, len(files), sum(f.stat().st_size for f in files))


def fresh_run_dir(cache: Path, name: str) -> Path:
    """An empty folder ``name`` for one run under the cache's ``runs``."""
    run_dir = cache / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    return run_dir


def _done(args: argparse.Namespace, run_dir: Path) -> None:
    if not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)


# --- measuring ----------------------------------------------------------------------


def _load(target: Target, folders: list[CtSeries], run_dir: Path) -> None:
    """Start the server once and push ``folders`` into it, one association each."""
    log_dir = run_dir / "push"
    log_dir.mkdir(exist_ok=True)
    with target.start() as server:
        result = push(server, folders, log_dir)
    print(f"[{target.label}] pushed {result.line()}", flush=True)


def _measure(
    args: argparse.Namespace, target: Target, kinds: list[Kind], series: Series
) -> Measured:
    """Restart the server ``--restarts`` times: cold metadata each time; warm metadata
    and the QIDO kinds after the first restart."""
    measured = Measured()
    path = series.metadata_path(target.root)
    for restart in range(args.restarts):
        with target.start() as server, warm_client(server, target) as client:
            _timed_metadata(client, path, measured.cold, args.slices)
            if restart == 0:
                _warm_metadata(client, path, measured.warm, args.warm, args.slices)
                _qido(client, target, kinds, measured)
    print(
        f"[{target.label}] series metadata: cold {ms(measured.cold.p50_ms)} median of "
        f"{len(measured.cold.seconds)}, warm {ms(measured.warm.p50_ms)} median of "
        f"{len(measured.warm.seconds)}",
        flush=True,
    )
    return measured


def _warm_up(client: Client, root: str) -> None:
    status, body, _ = client.get(f"{root}/studies?limit=1")
    if status != 200:
        raise RuntimeError(f"warm-up QIDO answered {status}: {body[:300]!r}")


def _timed_metadata(client: Client, path: str, timings: Timings, slices: int) -> None:
    status, body, seconds = client.get(path)
    if status != 200:
        raise RuntimeError(f"{path} answered {status}: {body[:300]!r}")
    count = len(json.loads(body))
    if count != slices:
        raise RuntimeError(f"{path} returned {count} instances, expected {slices}")
    timings.seconds.append(seconds)
    timings.results.append(count)


def _warm_metadata(client: Client, path: str, timings: Timings, repeats: int, slices: int) -> None:
    """Up to ``repeats`` requests, fewer (at least 5) if they take over the time budget."""
    deadline = time.monotonic() + WARM_BUDGET_SECONDS
    for number in range(repeats):
        if number >= 5 and time.monotonic() > deadline:
            break
        _timed_metadata(client, path, timings, slices)


def _qido(client: Client, target: Target, kinds: list[Kind], measured: Measured) -> None:
    for kind in kinds:  # two untimed requests each: SQLite pages, code paths
        for path in kind.paths[:2]:
            client.get(target.root + path)
    for kind in kinds:
        timings = time_kind(client, target.root, kind)
        measured.qido[kind.key] = timings
        print(
            f"[{target.label}] {kind.title:<20} p50 {ms(timings.p50_ms)}  p95 "
            f"{ms(timings.p95_ms)}  max {ms(timings.max_ms)}  "
            f"{timings.mean_results:.1f} results/request",
            flush=True,
        )
        for error in timings.errors[:3]:
            print(f"    error: {error}")


def _profile(args: argparse.Namespace, target: Target, kinds: list[Kind], series: Series) -> None:
    """py-spy (every active thread) over the QIDO kinds, then over the cold metadata
    request of ``--restarts`` restarts (sampled at 1 kHz, stacks concatenated)."""
    folder: Path = args.profile
    folder.mkdir(parents=True, exist_ok=True)
    qido = folder / "pyspy-dicomweb-qido.txt"
    with (
        target.start() as server,
        warm_client(server, target) as client,
        pyspy_profile.recording(server.pid, qido, gil=False),
    ):
        time.sleep(PYSPY_ATTACH_SECONDS)
        for kind in kinds:
            time_kind(client, target.root, kind)
    cold = folder / "pyspy-dicomweb-cold-metadata.txt"
    stacks = []
    for restart in range(args.restarts):
        part = folder / f"pyspy-dicomweb-cold-metadata-{restart}.txt"
        with (
            target.start() as server,
            warm_client(server, target) as client,
            pyspy_profile.recording(server.pid, part, gil=False, rate=1000),
        ):
            time.sleep(PYSPY_ATTACH_SECONDS)
            client.get(series.metadata_path(target.root))
        stacks.append(part.read_text() if part.exists() else "")
        part.unlink(missing_ok=True)
    cold.write_text("".join(stacks))
    for output in (qido, cold):
        summary = pyspy_profile.summarize(output)
        output.with_suffix(".summary.txt").write_text(summary + "\n")
        print(f"\npy-spy over {output.stem} (stacks in {output}):\n{summary}")


@contextmanager
def warm_client(server: servers.Running, target: Target) -> Iterator[Client]:
    """A client that has already made one QIDO request (login, imports)."""
    client = Client(server.base_url, target.headers)
    try:
        _warm_up(client, target.root)
        yield client
    finally:
        client.close()


# --- the report ---------------------------------------------------------------------


def _report(args: argparse.Namespace, results: dict[str, Measured], seconds: float) -> str:
    return "\n".join(
        [
            _environment(args, seconds),
            "",
            _table(args, results),
            "",
            _results_table(results),
            "",
            *_verdicts(results),
        ]
    )


def _environment(args: argparse.Namespace, seconds: float) -> str:
    line = (
        f"DICOMweb benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {cpu_model()} "
        f"({len(os.sched_getaffinity(0))} CPUs), Python {platform.python_version()}, "
        f"SQLite index; {args.requests} requests per query kind, metadata cold = median of "
        f"{args.restarts} restarts, warm = median of up to {args.warm}; "
        f"total run time {seconds / 60:.1f} min."
    )
    if not args.no_subset and not args.no_orthanc:
        line += f" Orthanc: {_orthanc_version()}."
    return line


def _rows(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(key, row title, target ms) in table order."""
    kinds = query_kinds(1, ["1.2"])
    rows = [(k.key, f"QIDO {k.title}", QIDO_TARGET_MS) for k in kinds]
    rows.append(("cold", f"series metadata, {args.slices:,} inst, cold", COLD_TARGET_MS))
    rows.append(("warm", f"series metadata, {args.slices:,} inst, warm", WARM_TARGET_MS))
    return rows


def _timings(measured: Measured | None, key: str) -> Timings:
    if measured is None:
        return Timings()
    if key in ("cold", "warm"):
        return measured.cold if key == "cold" else measured.warm
    return measured.qido.get(key, Timings())


def _table(args: argparse.Namespace, results: dict[str, Measured]) -> str:
    lines = [
        f"Full index: {args.studies:,} studies / {args.instances:,} seeded instances plus the "
        f"{args.slices:,}-slice CT series, ours only. Subset: {args.subset_studies:,} of those "
        "studies as small files plus the same CT series, pushed into a fresh `pacs serve` and "
        "into Orthanc alike (Orthanc holds only this subset). Times in ms; cold metadata p50 / "
        "p95 are over the restarts. Orthanc ÷ ours > 1: ours is faster on the same data.",
        "",
        "| query | ours p50 | ours p95 | target | result | ours p50 (subset) "
        "| ours p95 (subset) | Orthanc p50 (subset) | Orthanc p95 (subset) "
        "| Orthanc ÷ ours p50 (subset) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for key, title, target in _rows(args):
        full = _timings(results.get(FULL), key)
        ours = _timings(results.get(SUBSET), key)
        theirs = _timings(results.get(ORTHANC), key)
        lines.append(
            f"| {title} | {ms(full.p50_ms)} | {ms(full.p95_ms)} | < {target:.0f} "
            f"| {_verdict(full, key, target)} | {ms(ours.p50_ms)} | {ms(ours.p95_ms)} "
            f"| {ms(theirs.p50_ms)} | {ms(theirs.p95_ms)} "
            f"| {_ratio(theirs.p50_ms, ours.p50_ms)} |"
        )
    return "\n".join(lines)


def _verdict(timings: Timings, key: str, target: float) -> str:
    if not timings.seconds or timings.errors:
        return "FAIL (errors)" if timings.errors else "—"
    value = timings.p50_ms if key in ("cold", "warm") else timings.p95_ms
    return "PASS" if value < target else "FAIL"


def _results_table(results: dict[str, Measured]) -> str:
    """Mean results per request: a fast empty answer is not a fast answer."""
    lines = [
        "| results per request (mean) | ours, full index | ours, subset | Orthanc, subset |",
        "|---|---:|---:|---:|",
    ]
    for kind in query_kinds(1, ["1.2"]):
        cells = [
            f"{_timings(results.get(label), kind.key).mean_results:.1f}"
            for label in (FULL, SUBSET, ORTHANC)
        ]
        lines.append(f"| {kind.title} | {' | '.join(cells).replace('nan', '—')} |")
    return "\n".join(lines)


def _verdicts(results: dict[str, Measured]) -> list[str]:
    errors = [
        f"- {label} {key}: {len(t.errors)} failed requests, e.g. {t.errors[0]}"
        for label, measured in results.items()
        for key, t in measured.qido.items()
        if t.errors
    ]
    return errors or ["- no failed requests"]


def ms(value: float) -> str:
    return "—" if value != value else f"{value:.1f}"


def _ratio(theirs: float, ours: float) -> str:
    if theirs != theirs or ours != ours or ours == 0:
        return "—"
    return f"{theirs / ours:.1f}x"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _orthanc_version() -> str:
    try:
        out = subprocess.run(
            [servers.orthanc_executable(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "version unknown"
    first = next((line for line in out.splitlines() if line.strip()), "?").strip()
    return f"{first}, DICOMweb plugin {_package_version('orthanc-dicomweb')}"


def _package_version(package: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
