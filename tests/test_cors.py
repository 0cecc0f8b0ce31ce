"""CORS: a viewer on another origin (OHIF on its own host) may call the archive only when
``PACS_CORS_ORIGINS`` names that origin; by default no CORS header is ever sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from pacs.settings import Settings
from storage import Archive, open_archive
from storage.database import upgrade
from storage.users import Role, create_user
from tests.conftest import ADMIN_PASSWORD, Server

VIEWER = "http://viewer.example:3000"
AUTH = ("admin", "admin-password")
FRAMES = "/dicomweb/studies/1.2.3/series/4.5/instances/6.7/frames/1"
SERIES = "/dicomweb/studies/1.2.3/series"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """CORS is the same on every database: SQLite only."""
    arch = open_archive(f"sqlite:///{tmp_path / 'index.sqlite'}", (tmp_path / "blobs").as_uri())
    upgrade(arch.sessions.kw["bind"])
    yield arch
    arch.sessions.kw["bind"].dispose()


def client_for(archive: Archive, tmp_path: Path, origins: list[str]) -> TestClient:
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        session.commit()
    return TestClient(create_app(archive, Settings(data_dir=tmp_path, cors_origins=origins)))


@pytest.fixture
def cross_origin(archive: Archive, tmp_path: Path) -> Iterator[TestClient]:
    with client_for(archive, tmp_path, [VIEWER]) as client:
        yield client


@pytest.fixture
def same_origin(archive: Archive, tmp_path: Path) -> Iterator[TestClient]:
    with client_for(archive, tmp_path, []) as client:
        yield client


def preflight(
    client: TestClient, path: str, method: str, headers: str, origin: str = VIEWER
) -> httpx.Response:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def test_the_preflight_of_ohif_frame_requests_is_allowed(cross_origin: TestClient) -> None:
    response = preflight(cross_origin, FRAMES, "GET", "accept, authorization")

    assert response.status_code == 200  # no credentials needed: browsers never send them here
    assert response.headers["access-control-allow-origin"] == VIEWER
    assert "GET" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "accept" in allowed and "authorization" in allowed


def test_the_preflight_of_a_stow_is_allowed(cross_origin: TestClient) -> None:
    response = preflight(cross_origin, "/dicomweb/studies", "POST", "authorization, content-type")

    assert response.status_code == 200
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "content-type" in response.headers["access-control-allow-headers"].lower()


def test_responses_carry_cors_headers(cross_origin: TestClient) -> None:
    response = cross_origin.get(
        "/dicomweb/studies",
        headers={"Origin": VIEWER, "Accept": "application/dicom+json"},
        auth=AUTH,
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == VIEWER
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "warning" in exposed and "etag" in exposed
    assert "origin" in response.headers["vary"].lower()


def test_errors_carry_cors_headers_too(cross_origin: TestClient) -> None:
    """Without them the browser hides the status, and the viewer cannot tell 401 from down."""
    unauthenticated = cross_origin.get(SERIES, headers={"Origin": VIEWER})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == VIEWER

    missing = cross_origin.get("/dicomweb/no-such-thing", headers={"Origin": VIEWER}, auth=AUTH)
    assert missing.status_code == 404
    assert missing.headers["access-control-allow-origin"] == VIEWER

    bad_query = cross_origin.get(
        "/dicomweb/studies?NotAnAttribute=1", headers={"Origin": VIEWER}, auth=AUTH
    )
    assert bad_query.status_code == 400
    assert bad_query.headers["access-control-allow-origin"] == VIEWER


def test_other_origins_get_nothing(cross_origin: TestClient) -> None:
    stranger = "http://elsewhere.example"

    assert preflight(cross_origin, FRAMES, "GET", "authorization", stranger).status_code == 400
    response = cross_origin.get("/dicomweb/studies", headers={"Origin": stranger}, auth=AUTH)
    assert "access-control-allow-origin" not in response.headers


def test_by_default_there_are_no_cors_headers(same_origin: TestClient) -> None:
    response = same_origin.get("/dicomweb/studies", headers={"Origin": VIEWER}, auth=AUTH)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers

    refused = preflight(same_origin, SERIES, "GET", "accept, authorization")
    assert refused.status_code == 405
    assert "access-control-allow-origin" not in refused.headers


def test_origins_come_from_the_environment(tmp_path: Path) -> None:
    """Comma-separated, as an operator types them (a trailing slash would never match)."""
    env = {"PACS_CORS_ORIGINS": f"{VIEWER}/, https://ohif.example"}
    server = Server(tmp_path / "pacs-data", extra_env=env)
    server.start()
    try:
        for origin in (VIEWER, "https://ohif.example"):
            response = httpx.get(f"{server.base_url}/dicomweb/studies", headers={"Origin": origin})
            assert response.status_code == 401
            assert response.headers["access-control-allow-origin"] == origin
        allowed = httpx.get(
            f"{server.base_url}/dicomweb/studies",
            headers={"Origin": VIEWER},
            auth=("admin", ADMIN_PASSWORD),
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == VIEWER
    finally:
        server.stop()
