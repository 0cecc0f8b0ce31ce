"""Starting and stopping the two archives under test: ``pacs serve`` and Orthanc.

Each server runs in its own session (process group) with its output in a log
file in its run folder, and is stopped with SIGTERM (then SIGKILL) when its
context ends. Ports are free ports found by binding to port 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from index_seed import count_instances

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
ORTHANC_AE = "ORTHANC"
OURS_AE = "PACS"
ADMIN_PASSWORD = "bench-admin-password"


@dataclass(frozen=True)
class Running:
    """A server that is up: what a push needs to reach and watch it."""

    label: str
    pid: int
    ae_title: str
    dicom_port: int
    count: Callable[[], int]
    http_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nodelay_env() -> dict[str, str]:
    """DCMTK (storescu, Debian's Orthanc) keeps Nagle's algorithm on without this."""
    return {**os.environ, "TCP_NODELAY": "1"}


@contextmanager
def ours(run_dir: Path, database_url: str) -> Iterator[Running]:
    """``pacs serve`` on a fresh data folder and the given index database."""
    dicom_port, http_port = free_port(), free_port()
    env = pacs_env(run_dir, database_url, dicom_port, http_port)
    command = [str(_pacs_executable()), "serve"]
    with _process(command, env, run_dir / "pacs.log") as proc:
        _wait_http(proc, f"http://127.0.0.1:{http_port}/healthz", run_dir / "pacs.log")
        yield Running(
            "ours", proc.pid, OURS_AE, dicom_port, lambda: count_instances(database_url), http_port
        )


def pacs_env(run_dir: Path, database_url: str, dicom_port: int, http_port: int) -> dict[str, str]:
    """The environment of a run's ``pacs`` process: data folder, index, ports, admin."""
    return {
        **os.environ,
        "PACS_DATA_DIR": str(run_dir / "data"),
        "PACS_DATABASE_URL": database_url,
        "PACS_DICOM_PORT": str(dicom_port),
        "PACS_HTTP_PORT": str(http_port),
        "PACS_AE_TITLE": OURS_AE,
        "PACS_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }


@contextmanager
def orthanc(run_dir: Path, extra: dict[str, object] | None = None) -> Iterator[Running]:
    """Orthanc with its default SQLite index and file storage; no plugins unless
    ``extra`` (merged into the configuration) names some."""
    dicom_port, http_port = free_port(), free_port()
    config = run_dir / "orthanc.json"
    settings = {**_orthanc_config(run_dir, dicom_port, http_port), **(extra or {})}
    config.write_text(json.dumps(settings, indent=2))
    base = f"http://127.0.0.1:{http_port}"
    command = [orthanc_executable(), str(config)]
    with _process(command, nodelay_env(), run_dir / "orthanc.log") as proc:
        _wait_http(proc, f"{base}/system", run_dir / "orthanc.log")
        yield Running(
            "orthanc", proc.pid, ORTHANC_AE, dicom_port, lambda: _orthanc_count(base), http_port
        )


def _orthanc_config(run_dir: Path, dicom_port: int, http_port: int) -> dict[str, object]:
    return {
        "Name": "bench",
        "StorageDirectory": str(run_dir / "storage"),
        "IndexDirectory": str(run_dir / "index"),
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "SaveJobs": False,
        "StorageCompression": False,
        "DicomThreadsCount": 4,
    }


def _orthanc_count(base: str) -> int:
    with urllib.request.urlopen(f"{base}/statistics", timeout=30) as response:
        return int(json.load(response)["CountInstances"])


def _pacs_executable() -> Path:
    beside = Path(sys.executable).with_name("pacs")
    if beside.exists():
        return beside
    found = shutil.which("pacs")
    if found is None:
        raise SystemExit("cannot find the `pacs` command: run with the project's .venv/bin/python")
    return Path(found)


def find_orthanc() -> str | None:
    """Debian installs Orthanc in /usr/sbin, often not on a user's PATH."""
    return shutil.which("Orthanc", path=f"{os.environ.get('PATH', '')}:/usr/sbin")


def orthanc_executable() -> str:
    found = find_orthanc()
    if found is None:
        raise SystemExit("Orthanc is not installed (apt-get install orthanc)")
    return found


@contextmanager
def _process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_http(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a benchmark killed from outside still stops
    the servers it started and removes its run folders (its ``finally`` blocks run)."""

    def leave(signum: int, _frame: object) -> NoReturn:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
