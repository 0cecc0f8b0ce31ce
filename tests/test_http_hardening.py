"""HTTP hardening: security headers, HTTPS from settings, request size limits, result caps."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.request_limits import MAX_HEADER_BYTES, MAX_URL_BYTES
from pacs.settings import Settings
from storage import Archive
from storage.users import Role, create_user
from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server, require_tool

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ADMIN = ("admin", "admin-password")
API_POLICY = "default-src 'none'; frame-ancestors 'none'"


def client_for(archive: Archive, tmp_path: Path, **values: object) -> TestClient:
    return TestClient(create_app(archive, Settings(data_dir=tmp_path, **values)))


@pytest.fixture
def admin(archive: Archive) -> Archive:
    with archive.sessions() as session:
        create_user(session, *ADMIN, Role.ADMIN)
        session.commit()
    return archive


@pytest.fixture
def client(admin: Archive, tmp_path: Path) -> Iterator[TestClient]:
    with client_for(admin, tmp_path) as test_client:
        yield test_client


def assert_hardened(response: httpx.Response, policy: str = API_POLICY) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"] == policy
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


@SQLITE
def test_every_kind_of_response_carries_the_security_headers(
    client: TestClient, admin: Archive
) -> None:
    admin.ingest(next(SAMPLES.rglob("*.dcm")))
    for path in ("/healthz", "/api/me", "/dicomweb/studies", "/wado?requestType=WADO"):
        assert_hardened(client.get(path, auth=ADMIN))
    assert_hardened(client.get("/api/me"))  # a 401 too
    assert_hardened(client.get("/dicomweb/studies", headers={"Authorization": "Bearer x"}))
    me = client.get("/api/me", auth=ADMIN)
    assert me.headers["cache-control"] == "no-store"  # JSON about people stays out of caches
    assert "strict-transport-security" not in me.headers  # plain HTTP: no HSTS
    viewer = client.get("/viewer/")
    assert viewer.status_code == 200
    policy = viewer.headers["content-security-policy"]
    assert policy.startswith("default-src 'self'") and "frame-ancestors 'none'" in policy
    assert_hardened(viewer, policy)  # the viewer's own policy is kept


@SQLITE
def test_hsts_when_a_tls_proxy_is_in_front(admin: Archive, tmp_path: Path) -> None:
    with client_for(admin, tmp_path, behind_tls_proxy=True) as client:
        hsts = client.get("/healthz").headers["strict-transport-security"]
    assert hsts.startswith("max-age=31536000")


@SQLITE
def test_bodies_over_the_limit_get_413(client: TestClient) -> None:
    big = b'{"username": "admin", "password": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    for path in ("/api/auth/token", "/api/users"):
        response = client.post(
            path, content=big, headers={"Content-Type": "application/json"}, auth=ADMIN
        )
        assert response.status_code == 413, (path, response.status_code)
        assert "over the limit of 1048576 bytes" in response.json()["detail"]
        assert_hardened(response)

    def chunks() -> Iterator[bytes]:  # no Content-Length: caught while reading
        yield big[: len(big) // 2]
        yield big[len(big) // 2 :]

    chunked = client.post(
        "/api/auth/token", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413


@SQLITE
def test_stow_is_not_held_to_the_json_limit(client: TestClient) -> None:
    part = (SAMPLES / "ct_chest").rglob("*.dcm")
    body = b"".join(
        b"--B\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n"
        for path in sorted(part)[:8]
    )
    body += b"--B--\r\n"
    assert len(body) > 1024 * 1024
    response = client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'},
        auth=ADMIN,
    )
    assert response.status_code == 200, response.text


@SQLITE
def test_long_urls_and_huge_headers_are_refused(client: TestClient) -> None:
    long_url = client.get("/dicomweb/studies?PatientName=" + "a" * MAX_URL_BYTES, auth=ADMIN)
    assert long_url.status_code == 414
    assert_hardened(long_url)
    huge = client.get("/healthz", headers={f"x-filler-{i}": "y" * 1000 for i in range(40)})
    assert huge.status_code == 431
    assert str(MAX_HEADER_BYTES) in huge.json()["detail"]


@SQLITE
def test_qido_limit_is_capped_by_the_setting(admin: Archive, tmp_path: Path) -> None:
    for folder in ("ct_chest", "mr_brain", "xa_coronary"):
        admin.ingest(next((SAMPLES / folder).rglob("*.dcm")))
    with client_for(admin, tmp_path, max_query_results=2) as client:
        capped = client.get("/dicomweb/studies", params={"limit": 100000}, auth=ADMIN)
        assert capped.status_code == 200
        assert len(capped.json()) == 2
        assert "maximum of 2" in capped.headers["warning"]
        asked = client.get("/dicomweb/studies", params={"limit": 1}, auth=ADMIN)
        assert len(asked.json()) == 1 and "warning" not in asked.headers
        worklist = client.get("/api/worklist", params={"limit": 100000}, auth=ADMIN)
        assert worklist.status_code == 422  # its page size is capped by validation


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    openssl = require_tool("openssl")
    ca_key, ca, key, csr, cert = (
        folder / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    extensions = folder / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for command in (
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
         "-out", ca, "-days", "2", "-subj", "/CN=Test CA"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", extensions],
    ):  # fmt: skip
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return ca, cert, key


def test_https_with_certificates_from_settings(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    env = {"PACS_HTTPS_CERT_FILE": str(cert), "PACS_HTTPS_KEY_FILE": str(key)}
    server = Server(tmp_path / "pacs-data", env)
    server.tls_ca = ca
    url = server.base_url
    assert url.startswith("https://")
    try:
        server.start()
        with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=10) as tls:
            health = tls.get(f"{url}/healthz")
            assert health.status_code == 200
            assert health.headers["strict-transport-security"].startswith("max-age=")
            assert_hardened(health)
            token = tls.post(
                f"{url}/api/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert token.status_code == 200
        with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        server.stop()
