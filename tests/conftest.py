"""Shared fixtures: archives on SQLite and PostgreSQL, a live ``pacs serve``, DCMTK."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydicom.dataset import Dataset

from storage import Archive, Source, open_archive
from storage.database import upgrade

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_dicom"
PG_ADMIN_DSN = os.environ.get("PACS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_PASSWORD = "test-admin-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str) -> str:
    """Path of a system tool the tests depend on; a missing one fails, never skips."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: run `make test`, which installs it")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (PostgreSQL must be running)."""
    name = f"pacs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_postgres(url: str) -> None:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def fresh_database_url(request: pytest.FixtureRequest, folder: Path) -> str:
    """An empty index database of the kind ``request.param`` names."""
    if request.param == "sqlite":
        return f"sqlite:///{folder / 'index.sqlite'}"
    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    return url


def migrated_archive(database_url: str, folder: Path) -> Archive:
    arch = open_archive(database_url, (folder / "blobs").as_uri())
    upgrade(arch.sessions.kw["bind"])
    return arch


def sites_archive(request: pytest.FixtureRequest, folder: Path, sites: dict[str, str]) -> Archive:
    """The sample studies in a fresh archive, each sent from the site ``sites`` gives
    its folder (``""``, this archive's own, for the others)."""
    arch = migrated_archive(fresh_database_url(request, folder), folder)
    for path in sorted(SAMPLES.rglob("*.dcm")):
        site = sites.get(path.relative_to(SAMPLES).parts[0], "")
        assert arch.ingest(path, Source(ae_title="MODALITY", site=site)).ok
    return arch


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_database_url(request, tmp_path)


@pytest.fixture
def archive(database_url: str, tmp_path: Path) -> Iterator[Archive]:
    arch = migrated_archive(database_url, tmp_path)
    yield arch
    arch.sessions.kw["bind"].dispose()


class Server:
    """A real ``pacs serve`` process on free ports, with its own data folder."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.dicom_tls_port = free_port()  # used when the test sets PACS_TLS_CERT/KEY_FILE
        self.env = {
            **os.environ,
            "PACS_DATA_DIR": str(data_dir),
            "PACS_DICOM_PORT": str(self.dicom_port),
            "PACS_HTTP_PORT": str(self.http_port),
            "PACS_DICOM_TLS_PORT": str(self.dicom_tls_port),
            "PACS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # Browser tests sign in more often than a person; tests/test_tokens.py
            # checks the per-address limit itself.
            "PACS_SIGN_IN_PER_MINUTE": "1000",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"
        # Set to a CA file when the server is given an HTTPS certificate.
        self.tls_ca: Path | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_ca else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pacs serve exited:\n{self.log.read_text()}")
            try:
                verify = ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else True
                health = httpx.get(f"{self.base_url}/healthz", timeout=1, verify=verify)
                if health.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()  # a server that never answered must not outlive the test
        raise RuntimeError(f"pacs serve did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def archive(self) -> Archive:
        """Open the server's own index and blobs (as `pacs check` would)."""
        return open_archive(
            f"sqlite:///{self.data_dir.resolve() / 'index.sqlite'}",
            (self.data_dir.resolve() / "blobs").as_uri(),
        )

    @contextmanager
    def opened(self) -> Iterator[Archive]:
        """:meth:`archive`, closed again at the end of the block."""
        archive = self.archive()
        try:
            yield archive
        finally:
            archive.sessions.kw["bind"].dispose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "pacs-data")
    srv.start()
    yield srv
    srv.stop()


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command with Nagle off for DCMTK, capturing text output."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def pdftotext(path: Path) -> str:
    """The text of a PDF, as poppler's pdftotext reads it."""
    done = run([require_tool("pdftotext"), "-enc", "UTF-8", str(path), "-"])
    assert done.returncode == 0, done.stderr
    return done.stdout


def dataset_differences(got: Dataset, want: Dataset, where: str = "") -> list[str]:
    """Every data element that differs (tag, VR or value), sequences walked item by item."""
    diffs = []
    for tag in sorted(set(got.keys()) | set(want.keys())):
        name = f"{where}{tag}"
        if tag not in got or tag not in want:
            diffs.append(f"{name} only in {'stored' if tag in got else 'original'}")
            continue
        a, b = got[tag], want[tag]
        if a.VR != b.VR:
            diffs.append(f"{name} VR {a.VR} != {b.VR}")
        elif b.VR == "SQ":
            if len(a.value) != len(b.value):
                diffs.append(f"{name} has {len(a.value)} items, not {len(b.value)}")
            for i, (item_a, item_b) in enumerate(zip(a.value, b.value, strict=False)):
                diffs += dataset_differences(item_a, item_b, f"{name}[{i}].")
        elif a.value != b.value:
            diffs.append(f"{name} {a.keyword}: {a.value!r:.80} != {b.value!r:.80}")
    return diffs


@contextmanager
def storescp(folder: Path, ae_title: str, *options: str, port: int | None = None) -> Iterator[int]:
    """A DCMTK storescp writing into ``folder`` (on ``port``, else a free one); yields its port."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    command = [require_tool("storescp"), "-aet", ae_title, "-od", str(folder), *options, str(port)]
    proc = subprocess.Popen(command, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    try:
        time.sleep(0.3)
        assert proc.poll() is None, "storescp did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
