"""The HTTP skeleton: health, metrics, Basic and Bearer auth, users."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from storage import Archive
from storage.models import AuditEvent
from storage.users import Role, create_user, get_user
from tests.conftest import SAMPLES

PUBLIC = {"/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def token_for(client: TestClient, username: str, password: str) -> str:
    response = client.post("/api/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_health_is_public(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_other_route_needs_a_user(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    checked = 0
    for path, operations in paths.items():
        if path in PUBLIC or path.startswith(("/api/auth/", "/api/share/")):
            continue  # a password, refresh token, OIDC sign-in or share token is the credential
        for method in operations:
            response = client.request(method, path)
            assert response.status_code == 401, (method, path)
            assert "Basic" in response.headers["www-authenticate"]
            checked += 1
    assert checked > 60  # every router's routes, not only the app's own


def test_basic_auth_and_metrics(client: TestClient, archive: Archive) -> None:
    archive.ingest(next(SAMPLES.rglob("*.dcm")))
    assert client.get("/metrics", auth=("admin", "wrong-password")).status_code == 401
    response = client.get("/metrics", auth=("admin", "admin-password"))
    assert response.status_code == 200
    assert 'pacs_instances_received_total{outcome="stored"}' in response.text
    assert "pacs_received_bytes_total" in response.text
    assert "pacs_store_seconds_bucket" in response.text


def test_bearer_token(client: TestClient) -> None:
    token = token_for(client, "doctor", "doctor-password")
    me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": "doctor", "role": "radiologist", "sites": [""]}
    bad = client.get("/api/me", headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401


def test_wrong_password_gets_no_token(client: TestClient) -> None:
    response = client.post("/api/auth/token", json={"username": "doctor", "password": "nope"})
    assert response.status_code == 401
    unknown = client.post("/api/auth/token", json={"username": "ghost", "password": "nope"})
    assert unknown.status_code == 401


def test_malformed_authorization_headers(client: TestClient) -> None:
    for header in ("Basic !!!notbase64", "Basic ", "Bearer", "Digest abc", "Basic /w=="):
        response = client.get("/api/me", headers={"Authorization": header})
        assert response.status_code == 401, header


def test_only_admins_manage_users(client: TestClient) -> None:
    new = {"username": "hg-ct", "password": "modality-pass", "role": "modality"}
    assert (
        client.post("/api/users", json=new, auth=("doctor", "doctor-password")).status_code == 403
    )
    created = client.post("/api/users", json=new, auth=("admin", "admin-password"))
    assert created.status_code == 201
    again = client.post("/api/users", json=new, auth=("admin", "admin-password"))
    assert again.status_code == 409
    listed = client.get("/api/users", auth=("admin", "admin-password")).json()
    assert {"username": "hg-ct", "role": "modality", "sites": [""]} in listed
    weak = {"username": "x", "password": "short", "role": "admin"}
    assert client.post("/api/users", json=weak, auth=("admin", "admin-password")).status_code == 422


def test_a_remembered_token_still_expires(client: TestClient, archive: Archive) -> None:
    with archive.sessions() as session:
        user = get_user(session, "doctor")
        assert user is not None
        # JWT exp is whole seconds: 1 s could already be over by the first request
        token, expires = client.app.state.access_tokens.issue(user, timedelta(seconds=3))  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/me", headers=headers).status_code == 200
    assert client.get("/api/me", headers=headers).status_code == 200  # from memory now
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    assert client.get("/api/me", headers=headers).status_code == 401


def test_audit_events_still_gathering_are_written_at_shutdown(archive: Archive) -> None:
    with archive.sessions() as session:
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        found = test_client.get("/dicomweb/studies", auth=("doctor", "doctor-password"))
        assert found.status_code in (200, 204)
    with archive.sessions() as session:
        events = session.scalars(select(AuditEvent)).all()
    assert [(e.username, e.action, e.path) for e in events] == [
        ("doctor", "search", "/dicomweb/studies")
    ]
