"""Access tokens (JWT), refresh rotation, revocation, lock-out and the sign-in rate limit."""

from __future__ import annotations

import base64
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from api.auth import _BEARER_REMEMBER_SECONDS
from api.tokens import SECRET_FILE, signing_secret
from pacs.settings import Settings
from storage import Archive
from storage.models import ApiToken, AuditEvent, User
from storage.users import Role, create_user

# SQLite unless a test's SQL (DELETE/UPDATE ... RETURNING) is worth running on both.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
ADMIN = ("admin", "admin-password")
DOCTOR = ("doctor", "doctor-password")


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, **values)


@pytest.fixture
def users(archive: Archive) -> Archive:
    with archive.sessions() as session:
        create_user(session, *ADMIN, Role.ADMIN)
        create_user(session, *DOCTOR, Role.RADIOLOGIST)
        session.commit()
    return archive


@pytest.fixture
def client(users: Archive, tmp_path: Path) -> Iterator[TestClient]:
    # Tests sign in more often than the default rate limit; it has a test of its own.
    app = create_app(users, settings(tmp_path, sign_in_per_minute=60))
    with TestClient(app) as test_client:
        yield test_client


def sign_in(client: TestClient, who: tuple[str, str] = DOCTOR) -> dict[str, Any]:
    response = client.post("/api/auth/token", json={"username": who[0], "password": who[1]})
    assert response.status_code == 200, response.text
    return dict(response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def me(client: TestClient, token: str) -> int:
    return client.get("/api/me", headers=bearer(token)).status_code


def refresh(client: TestClient, token: str) -> httpx.Response:
    return client.post("/api/auth/refresh", json={"refresh_token": token})


@SQLITE
def test_sign_in_gives_a_short_lived_jwt_and_a_refresh_token(
    client: TestClient, tmp_path: Path
) -> None:
    answer = sign_in(client)
    assert answer["token_type"] == "bearer"
    assert 890 <= answer["expires_in"] <= 900  # access_token_seconds' default
    claims = jwt.decode(
        answer["access_token"], signing_secret(None, tmp_path), algorithms=["HS256"]
    )
    assert claims["sub"] == "doctor" and claims["role"] == "radiologist"
    assert claims["ver"] == 0 and isinstance(claims["uid"], int) and claims["jti"]
    assert claims["exp"] - claims["iat"] == 900
    assert me(client, answer["access_token"]) == 200
    # The refresh token is no access token, and is stored only as its hash.
    assert me(client, answer["refresh_token"]) == 401
    with client.app.state.archive.sessions() as session:  # type: ignore[attr-defined]
        stored = session.query(ApiToken.token_sha256).scalar()
    assert stored != answer["refresh_token"] and len(stored) == 64


@BOTH
def test_refresh_rotates_and_a_used_token_is_refused(client: TestClient) -> None:
    first = sign_in(client)
    second = refresh(client, first["refresh_token"])
    assert second.status_code == 200, second.text
    pair = second.json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert pair["refresh_expires_at"] == first["refresh_expires_at"]  # the session's end stays
    assert me(client, pair["access_token"]) == 200
    reused = refresh(client, first["refresh_token"])
    assert reused.status_code == 401
    assert "sign in again" in reused.json()["detail"]
    assert refresh(client, pair["refresh_token"]).status_code == 200


@SQLITE
def test_logout_revokes_the_refresh_token(client: TestClient) -> None:
    answer = sign_in(client)
    out = client.post("/api/auth/logout", json={"refresh_token": answer["refresh_token"]})
    assert out.status_code == 204
    assert refresh(client, answer["refresh_token"]).status_code == 401
    unknown = client.post("/api/auth/logout", json={"refresh_token": "never-issued"})
    assert unknown.status_code == 204


@SQLITE
def test_an_expired_refresh_token_is_refused(client: TestClient) -> None:
    answer = sign_in(client)
    with client.app.state.archive.sessions() as session:  # type: ignore[attr-defined]
        session.execute(update(ApiToken).values(expires_at=datetime.now(UTC) - timedelta(1)))
        session.commit()
    assert refresh(client, answer["refresh_token"]).status_code == 401


@SQLITE
def test_forged_and_expired_access_tokens_are_refused(client: TestClient) -> None:
    claims = jwt.decode(sign_in(client)["access_token"], options={"verify_signature": False})
    forged_key = jwt.encode({**claims, "role": "admin"}, "x" * 32, algorithm="HS256")
    unsigned = jwt.encode({**claims, "role": "admin"}, None, algorithm="none")
    head, _, signature = sign_in(client)["access_token"].split(".")
    spliced = f"{head}.{base64.urlsafe_b64encode(b'{}').decode().rstrip('=')}.{signature}"
    for token in (forged_key, unsigned, spliced, "not.a.jwt", ""):
        assert me(client, token) == 401, token
    user = client.app.state.archive.sessions().get(User, claims["uid"])  # type: ignore[attr-defined]
    expired, _ = client.app.state.access_tokens.issue(user, timedelta(seconds=-1))  # type: ignore[attr-defined]
    assert me(client, expired) == 401


@SQLITE
def test_admin_password_reset_revokes_tokens_at_once(client: TestClient) -> None:
    answer = sign_in(client)
    assert me(client, answer["access_token"]) == 200  # now remembered by the process
    basic = client.get("/api/me", auth=DOCTOR)
    assert basic.status_code == 200
    reset = client.put(
        "/api/users/doctor/password", json={"password": "a-new-password"}, auth=ADMIN
    )
    assert reset.status_code == 204, reset.text
    assert me(client, answer["access_token"]) == 401
    assert refresh(client, answer["refresh_token"]).status_code == 401
    assert client.get("/api/me", auth=DOCTOR).status_code == 401
    assert me(client, sign_in(client, ("doctor", "a-new-password"))["access_token"]) == 200
    missing = client.put("/api/users/ghost/password", json={"password": "whatever1"}, auth=ADMIN)
    assert missing.status_code == 404
    assert (
        client.put(
            "/api/users/admin/password",
            json={"password": "x" * 9},
            auth=("doctor", "a-new-password"),
        ).status_code
        == 403
    )


@SQLITE
def test_changing_ones_own_password_needs_the_current_one(client: TestClient) -> None:
    answer = sign_in(client)
    headers = bearer(answer["access_token"])
    wrong = {"current_password": "not-it", "new_password": "doctor-password-2"}
    refused = client.post("/api/me/password", json=wrong, headers=headers)
    assert (refused.status_code, refused.json()["detail"]) == (403, "wrong username or password")
    right = {"current_password": DOCTOR[1], "new_password": "doctor-password-2"}
    assert client.post("/api/me/password", json=right, headers=headers).status_code == 204
    assert me(client, answer["access_token"]) == 401
    assert refresh(client, answer["refresh_token"]).status_code == 401
    sign_in(client, ("doctor", "doctor-password-2"))


@BOTH
def test_disabling_a_user_ends_its_sessions_and_sign_ins(client: TestClient) -> None:
    answer = sign_in(client)
    assert me(client, answer["access_token"]) == 200
    assert client.post("/api/users/doctor/disable", auth=ADMIN).status_code == 204
    assert me(client, answer["access_token"]) == 401
    assert refresh(client, answer["refresh_token"]).status_code == 401
    basic = client.get("/api/me", auth=DOCTOR)
    assert (basic.status_code, basic.json()["detail"]) == (401, "this account is disabled")
    token = client.post("/api/auth/token", json={"username": "doctor", "password": DOCTOR[1]})
    assert (token.status_code, token.json()["detail"]) == (401, "this account is disabled")
    assert client.post("/api/users/admin/disable", auth=ADMIN).status_code == 409
    assert client.post("/api/users/ghost/disable", auth=ADMIN).status_code == 404
    assert client.post("/api/users/doctor/enable", auth=ADMIN).status_code == 204
    assert me(client, answer["access_token"]) == 401  # old sessions stay ended
    assert me(client, sign_in(client)["access_token"]) == 200


@SQLITE
def test_cli_disable_is_seen_by_the_server(
    client: TestClient, archive: Archive, database_url: str, tmp_path: Path
) -> None:
    answer = sign_in(client)
    assert me(client, answer["access_token"]) == 200  # remembered by this process now
    env = {**os.environ, "PACS_DATA_DIR": str(tmp_path), "PACS_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "pacs.cli", "user", "disable", "doctor"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "user doctor disabled" in done.stdout
    # Another process did it: refresh tokens are gone from the database at once...
    assert refresh(client, answer["refresh_token"]).status_code == 401
    # ...and the access token once this process's memory of it lapses.
    deadline = time.monotonic() + _BEARER_REMEMBER_SECONDS + 1
    while me(client, answer["access_token"]) == 200:
        assert time.monotonic() < deadline, "a revoked token outlived the promised bound"
        time.sleep(0.5)
    command[4] = "enable"
    assert subprocess.run(command, env=env, capture_output=True, timeout=60).returncode == 0
    assert me(client, sign_in(client)["access_token"]) == 200


@BOTH
def test_lock_out_after_repeated_wrong_passwords(client: TestClient, archive: Archive) -> None:
    def attempt(password: str) -> httpx.Response:
        return client.post("/api/auth/token", json={"username": "doctor", "password": password})

    for _ in range(4):
        assert attempt("wrong").status_code == 401
    assert attempt(DOCTOR[1]).status_code == 200  # a success resets the count...
    for _ in range(4):
        assert attempt("wrong").status_code == 401
    assert attempt(DOCTOR[1]).status_code == 200  # ...so 4 + 4 wrong lock nothing
    details = [attempt("wrong").json()["detail"] for _ in range(5)]
    assert details[:4] == ["wrong username or password"] * 4
    assert "locked" in details[4]  # the fifth wrong one locks
    locked = attempt(DOCTOR[1])
    assert locked.status_code == 401
    assert "locked after repeated failed sign-ins" in locked.json()["detail"]
    basic = client.get("/api/me", auth=DOCTOR)
    assert basic.status_code == 401 and "locked" in basic.json()["detail"]
    assert client.get("/api/me", auth=ADMIN).status_code == 200  # others are not affected
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.sessions() as session:  # every refusal is in the audit trail
        refusals = session.scalars(
            select(AuditEvent).where(AuditEvent.username == "doctor", AuditEvent.status == 401)
        ).all()
    assert len(refusals) == 4 + 4 + 5 + 2
    with archive.sessions() as session:  # the lock-out ends after its minutes
        session.execute(
            update(User)
            .where(User.username == "doctor")
            .values(locked_until=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
    assert client.get("/api/me", auth=DOCTOR).status_code == 200


@SQLITE
def test_a_locked_account_costs_as_much_to_ask_as_an_unlocked_one(client: TestClient) -> None:
    """No timing oracle: a locked account still verifies one argon2 hash."""

    def seconds(username: str, password: str) -> float:
        started = time.perf_counter()
        client.get("/api/me", auth=(username, password))
        return time.perf_counter() - started

    for _ in range(5):
        client.get("/api/me", auth=("doctor", "wrong"))
    wrong = sorted(seconds("admin", "wrong") for _ in range(3))[1]
    locked = sorted(seconds("doctor", DOCTOR[1]) for _ in range(3))[1]
    assert locked > wrong / 3, (locked, wrong)


@SQLITE
def test_the_token_endpoint_is_rate_limited_per_client(users: Archive, tmp_path: Path) -> None:
    app = create_app(users, settings(tmp_path, sign_in_per_minute=3))
    with TestClient(app) as client:
        for _ in range(3):
            sign_in(client)
        refused = client.post("/api/auth/token", json={"username": "x", "password": "y"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        assert "too many sign-in attempts" in refused.json()["detail"]
        # Another address is counted on its own.
        other = TestClient(app, client=("192.0.2.7", 50000))
        assert sign_in(other)["access_token"]


def test_the_signing_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    key = signing_secret(None, tmp_path)
    assert len(key) >= 32
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert signing_secret(None, tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temporary left
    configured = secrets.token_urlsafe(32)
    assert signing_secret(configured, tmp_path) == configured.encode()


@SQLITE
def test_processes_sharing_a_data_folder_accept_each_others_tokens(
    users: Archive, tmp_path: Path
) -> None:
    with (
        TestClient(create_app(users, settings(tmp_path))) as one,
        TestClient(create_app(users, settings(tmp_path))) as two,
        TestClient(create_app(users, settings(tmp_path / "elsewhere"))) as stranger,
    ):
        token = sign_in(one)["access_token"]
        assert me(two, token) == 200  # each app remembers its own callers, like a process
        assert me(stranger, token) == 401
