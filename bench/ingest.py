"""C-STORE ingest benchmark: ``pacs serve`` against Orthanc, in the same run.

What it measures, each push repeated ``--repeat`` times on fresh data folders
(medians are reported; rounds are interleaved so machine noise hits both
servers alike):

* **1 assoc** - a generated 512x512 16-bit CT series (``--slices``, default
  1,000 slices of ~526 kB, Explicit VR Little Endian) sent by one ``storescu``
  over one association;
* **4 assoc** - four different series over four concurrent associations (four
  ``storescu`` processes);
* **1 assoc, seeded index** - the single-association push again into an index
  already holding ``--seed-instances`` (default 1,000,000) instances in ~10k
  studies, bulk-inserted through ``storage/``; the rate should stay within 10 %
  of the empty-index rate;
* **memory** - a ``--memory-slices`` (default 3,000) slice series over one
  association; the server's peak RSS should stay under 300 MB.

For each push: instances/s, MB/s (10^6 bytes of DICOM files), server CPU seconds
per 1,000 instances (psutil user+system time of the server process tree, before
and after) and peak server RSS (MiB, sampled every 50 ms). Orthanc (Debian's
``/usr/sbin/Orthanc``, default SQLite index, no plugins) gets the same pushes;
``ratio`` is ours / Orthanc instances per second. ``storescu`` and Orthanc run
with ``TCP_NODELAY=1`` (DCMTK leaves Nagle's algorithm on otherwise).

With ``--database postgresql`` each run gets its own database on the local server
(127.0.0.1:5432, user postgres); PostgreSQL's own CPU is not in the server's
process tree, so CPU-s/1000 then counts the archive process only.

Generated series and the seeded index template are cached under ``--cache``
(default ``bench/.cache``), so only the first run pays for them.

Run from the repository root::

    .venv/bin/python bench/ingest.py                 # full run, 10-25 minutes
    .venv/bin/python bench/ingest.py --quick         # 200 slices, 20k seeded, 1 round
    .venv/bin/python bench/ingest.py --database postgresql
    .venv/bin/python bench/ingest.py --repeat 0 --profile /tmp/prof   # py-spy only

The output ends with markdown tables (and the targets' verdicts) for the README;
``--keep-runs`` keeps each run's folder with the server and storescu logs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspy_profile
import servers
from ct_series import CtSeries, ensure_series
from index_seed import IndexDatabases, PostgresDatabases, SqliteDatabases
from push import PushFailed, PushResult, push

BENCH_DIR = Path(__file__).resolve().parent
SERVER_SOURCES = ("pacs", "storage", "api")
SEEDED_TOLERANCE = 0.10
MEMORY_TARGET_MB = 300
OURS, ORTHANC = "ours", "orthanc"

QUICK = {"slices": 200, "seed_instances": 20_000, "repeat": 1, "memory_slices": 600}
FULL = {"slices": 1000, "seed_instances": 1_000_000, "repeat": 3, "memory_slices": 3000}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    series: list[CtSeries]
    seeded: bool = False
    against_orthanc: bool = True


@dataclass
class Results:
    runs: dict[tuple[str, str], list[PushResult]] = field(default_factory=dict)

    def add(self, scenario: str, target: str, result: PushResult) -> None:
        self.runs.setdefault((scenario, target), []).append(result)

    def median(self, scenario: str, target: str, metric: Callable[[PushResult], float]) -> float:
        runs = self.runs.get((scenario, target), [])
        return statistics.median(metric(r) for r in runs) if runs else float("nan")


@dataclass(frozen=True)
class Bench:
    args: argparse.Namespace
    cache: Path
    databases: IndexDatabases
    template: str | None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    servers.exit_on_sigterm()
    started = time.monotonic()
    sources = _source_stamps()
    bench = _prepare(args)
    scenarios = _scenarios(args, bench.cache)
    results = Results()
    _run_rounds(bench, scenarios, results)
    if args.profile:
        _profile(bench, scenarios[0], args.profile)
    if args.repeat:
        print()
        print(_report(args, scenarios, results, time.monotonic() - started))
    _warn_if_changed(sources)
    return 0


def _source_stamps() -> dict[Path, int]:
    """Modification times of the server's sources, to spot edits made during the run."""
    root = BENCH_DIR.parent
    return {
        path: path.stat().st_mtime_ns
        for folder in SERVER_SOURCES
        for path in (root / folder).rglob("*.py")
    }


def _warn_if_changed(before: dict[Path, int]) -> None:
    after = _source_stamps()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        names = ", ".join(str(p.relative_to(BENCH_DIR.parent)) for p in changed)
        print(f"\nwarning: server sources changed during the run, rounds may differ: {names}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small debug run: " + str(QUICK))
    parser.add_argument("--slices", type=int, help="slices per series (default 1000)")
    parser.add_argument("--associations", type=int, default=4, help="concurrent associations")
    parser.add_argument(
        "--repeat",
        type=int,
        help="rounds; medians are reported (default 3; 0 with --profile: profile only)",
    )
    parser.add_argument("--seed-instances", type=int, help="seeded index size (default 1e6)")
    parser.add_argument("--memory-slices", type=int, help="memory-run series (default 3000)")
    parser.add_argument("--skip-seeded", action="store_true", help="no seeded-index run")
    parser.add_argument("--skip-memory", action="store_true", help="no memory run")
    parser.add_argument("--no-orthanc", action="store_true", help="measure ours only")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    parser.add_argument("--keep-runs", action="store_true", help="keep run folders and logs")
    parser.add_argument(
        "--profile",
        type=Path,
        help="after measuring, py-spy two 1-assoc pushes (GIL, all threads) into this folder",
    )
    args = parser.parse_args(argv)
    for name, full in FULL.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else full)
    return args


def _prepare(args: argparse.Namespace) -> Bench:
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    databases: IndexDatabases = (
        PostgresDatabases() if args.database == "postgresql" else SqliteDatabases(cache)
    )
    template = None if args.skip_seeded else databases.template(args.seed_instances)
    return Bench(args, cache, databases, template)


def _scenarios(args: argparse.Namespace, cache: Path) -> list[Scenario]:
    series = [ensure_series(cache, f"s{i}", args.slices, i) for i in range(args.associations)]
    scenarios = [
        Scenario("single", "1 assoc", series[:1]),
        Scenario("concurrent", f"{args.associations} assoc", series),
    ]
    if not args.skip_seeded:
        title = f"1 assoc, index {args.seed_instances:,} inst"
        scenarios.append(Scenario("seeded", title, series[:1], seeded=True, against_orthanc=False))
    if not args.skip_memory:
        memory = ensure_series(cache, "memory", args.memory_slices, len(series))
        title = f"1 assoc, {args.memory_slices:,} slices (memory)"
        scenarios.append(Scenario("memory", title, [memory]))
    return scenarios


def _run_rounds(bench: Bench, scenarios: list[Scenario], results: Results) -> None:
    targets = [OURS] if bench.args.no_orthanc else [OURS, ORTHANC]
    for round_no in range(1, bench.args.repeat + 1):
        for scenario in scenarios:
            for target in targets:
                if target == ORTHANC and not scenario.against_orthanc:
                    continue
                result = _run_once(bench, scenario, target, round_no)
                results.add(scenario.key, target, result)
                print(
                    f"[round {round_no}] {scenario.title:<34} {target:<8} {result.line()}",
                    flush=True,
                )


def _run_once(bench: Bench, scenario: Scenario, target: str, round_no: int) -> PushResult:
    name = f"{scenario.key}-{target}-{round_no}"
    with _server(bench, scenario, target, name) as server:
        try:
            return push(server, scenario.series, bench.cache / "runs" / name)
        except PushFailed as exc:
            raise SystemExit(f"push failed: {exc}") from exc


@contextmanager
def _server(bench: Bench, scenario: Scenario, target: str, name: str) -> Iterator[servers.Running]:
    run_dir = bench.cache / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if target == ORTHANC:
        with servers.orthanc(run_dir) as server:
            yield server
    else:
        template = bench.template if scenario.seeded else None
        url = bench.databases.create(name, run_dir / "data", template)
        try:
            with servers.ours(run_dir, url) as server:
                yield server
        finally:
            bench.databases.drop(url)
    # Reached only on success: a failed run keeps its folder and logs for a look.
    if not bench.args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)


def _profile(bench: Bench, scenario: Scenario, folder: Path) -> None:
    """One extra push per py-spy mode (GIL holder only, then every active thread)."""
    folder.mkdir(parents=True, exist_ok=True)
    for mode in ("gil", "active"):
        collapsed = folder / f"pyspy-{scenario.key}-{mode}.txt"
        name = f"profile-{mode}"
        with (
            _server(bench, scenario, OURS, name) as server,
            pyspy_profile.recording(server.pid, collapsed, gil=mode == "gil"),
        ):
            result = push(server, scenario.series, bench.cache / "runs" / name)
        summary = pyspy_profile.summarize(collapsed)
        collapsed.with_suffix(".summary.txt").write_text(summary + "\n")
        print(f"\npy-spy ({mode} samples), push with py-spy attached: {result.line()}")
        print(f"stacks in {collapsed}\n{summary}")


def _report(
    args: argparse.Namespace, scenarios: list[Scenario], results: Results, seconds: float
) -> str:
    lines = [
        _environment(args, seconds),
        "",
        _main_table(scenarios, results),
        "",
        *_targets(args, results),
    ]
    if not args.no_orthanc:
        lines += ["", _orthanc_table(scenarios, results)]
    return "\n".join(lines)


def _environment(args: argparse.Namespace, seconds: float) -> str:
    return (
        f"Ingest benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {_cpu_model()} "
        f"({_cpu_count()} CPUs), Python {platform.python_version()}, index {args.database}, "
        f"{_tool_version(['storescu', '--version'])}, "
        f"{_tool_version([servers.find_orthanc() or 'Orthanc', '--version'])}; "
        f"median of {args.repeat} round(s); total run time {seconds / 60:.1f} min."
    )


def _main_table(scenarios: list[Scenario], results: Results) -> str:
    rows = [
        "| scenario | ours inst/s | ours MB/s | ours CPU-s/1000 | ours peak RSS MB "
        "| Orthanc inst/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        ours = _medians(results, scenario.key, OURS)
        theirs = results.median(scenario.key, ORTHANC, lambda r: r.instances_per_s)
        ratio = ours[0] / theirs if theirs == theirs else float("nan")
        rows.append(
            f"| {scenario.title} | {ours[0]:.1f} | {ours[1]:.1f} | {ours[2]:.2f} | {ours[3]:.0f} "
            f"| {_number(theirs, '.1f')} | {_number(ratio, '.2f')} |"
        )
    return "\n".join(rows)


def _orthanc_table(scenarios: list[Scenario], results: Results) -> str:
    rows = [
        "| scenario (Orthanc) | inst/s | MB/s | CPU-s/1000 | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        if scenario.against_orthanc:
            m = _medians(results, scenario.key, ORTHANC)
            rows.append(f"| {scenario.title} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.2f} | {m[3]:.0f} |")
    return "\n".join(rows)


def _medians(results: Results, scenario: str, target: str) -> tuple[float, float, float, float]:
    return (
        results.median(scenario, target, lambda r: r.instances_per_s),
        results.median(scenario, target, lambda r: r.mb_per_s),
        results.median(scenario, target, lambda r: r.cpu_per_1000),
        results.median(scenario, target, lambda r: r.peak_rss_mib),
    )


def _targets(args: argparse.Namespace, results: Results) -> list[str]:
    notes = []
    if not args.skip_seeded:
        empty = results.median("single", OURS, lambda r: r.instances_per_s)
        seeded = results.median("seeded", OURS, lambda r: r.instances_per_s)
        change = seeded / empty - 1
        verdict = "OK" if change >= -SEEDED_TOLERANCE else "MISSED"
        notes.append(
            f"- seeded index ({args.seed_instances:,} instances) vs empty: {change:+.1%} "
            f"({seeded:.1f} vs {empty:.1f} inst/s; target within 10 %): {verdict}"
        )
    if not args.skip_memory:
        peak = results.median("memory", OURS, lambda r: r.peak_rss_mib)
        worst = max(r.peak_rss_mib for r in results.runs[("memory", OURS)])
        verdict = "OK" if worst < MEMORY_TARGET_MB else "MISSED"
        notes.append(
            f"- {args.memory_slices:,}-slice series: peak RSS {peak:.0f} MiB median, "
            f"{worst:.0f} MiB worst (target < {MEMORY_TARGET_MB} MB): {verdict}"
        )
    return notes


def _number(value: float, spec: str, suffix: str = "") -> str:
    return "—" if value != value else f"{value:{spec}}{suffix}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def _tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return f"{command[0]} (version unknown)"
    first = next((line for line in out.splitlines() if line.strip()), "")
    return first.strip().strip("$").replace("dcmtk: ", "DCMTK ").strip()


if __name__ == "__main__":
    sys.exit(main())
