"""One measured push: ``storescu`` processes sending folders to a running server.

Each folder goes over its own association (one ``storescu +sd FOLDER``); all of
them start together. Around the push the server's process tree is measured with
psutil: CPU seconds (user + system) before and after, and resident memory
sampled every 50 ms for the peak.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from ct_series import CtSeries
from servers import Running, nodelay_env

SAMPLE_SECONDS = 0.05
PUSH_TIMEOUT = 3600.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class PushResult:
    instances: int
    total_bytes: int
    seconds: float
    cpu_seconds: float
    system_seconds: float
    peak_rss: int

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.seconds

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds / self.instances * 1000

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss / MIB

    def line(self) -> str:
        return (
            f"{self.instances} inst in {self.seconds:.2f} s: {self.instances_per_s:.1f} inst/s, "
            f"{self.mb_per_s:.1f} MB/s, {self.cpu_per_1000:.2f} CPU-s/1000 "
            f"({self.system_seconds / self.cpu_seconds:.0%} system), "
            f"peak RSS {self.peak_rss_mib:.0f} MiB"
        )


class PushFailed(RuntimeError):
    pass


def push(server: Running, series: list[CtSeries], log_dir: Path) -> PushResult:
    """Send every series over its own concurrent association; measure the server."""
    # Write back what earlier pushes left dirty in the page cache first: otherwise a
    # push right after the 4-association one (2 GB) pays for its writeback in every
    # fsync, and its rate says more about the order of scenarios than the server.
    os.sync()
    before = server.count()
    process = psutil.Process(server.pid)
    sampler = _RssSampler(process)
    cpu_before = _tree_cpu(process)
    sampler.start()
    started = time.perf_counter()
    try:
        codes = _run_storescu(server, series, log_dir)
    finally:
        seconds = time.perf_counter() - started
        sampler.stop()
    user_after, system_after = _tree_cpu(process)
    user, system = user_after - cpu_before[0], system_after - cpu_before[1]
    _check(server, series, before, codes, log_dir)
    instances = sum(s.files for s in series)
    total_bytes = sum(s.total_bytes for s in series)
    return PushResult(instances, total_bytes, seconds, user + system, system, sampler.peak)


def _run_storescu(server: Running, series: list[CtSeries], log_dir: Path) -> list[int]:
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for number, item in enumerate(series):
            log = (log_dir / f"storescu-{number}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    _storescu_command(server, item.folder),
                    env=nodelay_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return [proc.wait(PUSH_TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def _storescu_command(server: Running, folder: Path) -> list[str]:
    return [
        "storescu",
        "-aet",
        "BENCHSCU",
        "-aec",
        server.ae_title,
        "+sd",
        "+sp",
        "*.dcm",
        "127.0.0.1",
        str(server.dicom_port),
        str(folder),
    ]


def _check(
    server: Running, series: list[CtSeries], before: int, codes: list[int], log_dir: Path
) -> None:
    expected = sum(s.files for s in series)
    stored = server.count() - before
    if any(codes) or stored != expected:
        raise PushFailed(
            f"{server.label}: storescu exit codes {codes}, {stored} of {expected} instances "
            f"stored (logs in {log_dir})"
        )


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _tree_cpu(process: psutil.Process) -> tuple[float, float]:
    """User and system CPU seconds of the process tree (reaped children included)."""
    user = system = 0.0
    for proc in _tree(process):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += times.user + times.children_user
        system += times.system + times.children_system
    return user, system


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in _tree(process):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class _RssSampler:
    """Samples the tree's RSS every 50 ms in a thread and keeps the peak."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = _tree_rss(process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss(self.process))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, _tree_rss(self.process))
