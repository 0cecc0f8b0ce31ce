"""OpenID Connect sign-in against a small real provider started by the test.

The provider is an HTTP server on a free loopback port serving discovery, a JWKS,
an authorization endpoint that signs in a configured user at once, and a token
endpoint that checks the client's secret and the PKCE verifier and returns an ID
token signed with a real RSA key (joserfc). The archive talks to it over HTTP like
to any provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from api.app import create_app
from pacs.settings import Settings
from storage import Archive
from storage.users import Role, create_user, get_user

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CLIENT_ID = "pacs-viewer"
CLIENT_SECRET = "s3cret:with/odd&chars"


class Provider:
    """The identity provider: who signs in next, and how its ID token is made."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.signing_key = self.key  # a test swaps in a stranger's key
        self.claims: dict[str, Any] = {"sub": "u-1001", "preferred_username": "dr.lan"}
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, str]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._json(provider.discovery())
                elif url.path == "/jwks":
                    self._json(KeySet([provider.key]).as_dict(private=False))
                elif url.path == "/authorize":
                    self._authorize(dict(urllib.parse.parse_qsl(url.query)))
                else:
                    self._json({"error": "not_found"}, 404)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                provider.token_requests.append(form)
                self._json(*provider.token(form, self.headers.get("authorization", "")))

            def _authorize(self, params: dict[str, str]) -> None:
                code = secrets.token_urlsafe(16)
                provider.codes[code] = params
                back = {"code": code, "state": params["state"]}
                self.send_response(302)
                self.send_header(
                    "Location", f"{params['redirect_uri']}?{urllib.parse.urlencode(back)}"
                )
                self.end_headers()

            def _json(self, body: dict[str, Any], code: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def token(self, form: dict[str, str], authorization: str) -> tuple[dict[str, Any], int]:
        """RFC 6749 §4.1.3 with client_secret_basic and PKCE (RFC 7636 §4.6)."""
        expected = base64.b64encode(
            f"{urllib.parse.quote(CLIENT_ID, safe='')}:"
            f"{urllib.parse.quote(CLIENT_SECRET, safe='')}".encode()
        ).decode()
        if authorization != f"Basic {expected}":
            return {"error": "invalid_client"}, 401
        asked = self.codes.pop(form.get("code", ""), None)
        if asked is None or asked["redirect_uri"] != form.get("redirect_uri"):
            return {"error": "invalid_grant"}, 400
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        ).rstrip(b"=")
        if challenge.decode() != asked["code_challenge"]:
            return {"error": "invalid_grant", "error_description": "PKCE"}, 400
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": asked["nonce"],
            **self.claims,
        }
        header = {"alg": "RS256", "kid": "k1"}
        id_token = jwt.encode(header, claims, self.signing_key)
        return {"access_token": "at", "token_type": "Bearer", "id_token": id_token}, 200

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    idp = Provider()
    yield idp
    idp.stop()


def app_for(archive: Archive, tmp_path: Path, provider: Provider, **values: Any) -> TestClient:
    settings = Settings(
        data_dir=tmp_path,
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        **values,
    )
    return TestClient(create_app(archive, settings))


def sign_in(client: TestClient) -> httpx.Response:
    """Walk the browser's path: to the provider, back with a code, to the viewer."""
    start = client.get("/api/auth/oidc/login", follow_redirects=False)
    assert start.status_code == 302, start.text
    assert start.headers["location"].startswith(client.app.state.settings.oidc_issuer)  # type: ignore[attr-defined]
    at_provider = httpx.get(start.headers["location"], follow_redirects=False)
    assert at_provider.status_code == 302
    return client.get(at_provider.headers["location"], follow_redirects=False)


def add_dr_lan(archive: Archive) -> None:
    """The local radiologist the provider's default claims name."""
    with archive.sessions() as session:
        create_user(session, "dr.lan", "local-password", Role.RADIOLOGIST)
        session.commit()


def handed_over(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/viewer/#/oidc?")
    return dict(urllib.parse.parse_qsl(location.split("?", 1)[1]))


def test_an_existing_user_signs_in_through_the_provider(
    archive: Archive, tmp_path: Path, provider: Provider
) -> None:
    add_dr_lan(archive)
    with app_for(archive, tmp_path, provider) as client:
        tokens = handed_over(sign_in(client))
        me = client.get("/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert me.status_code == 200
        assert (me.json()["username"], me.json()["role"]) == ("dr.lan", "radiologist")
        assert tokens["username"] == "dr.lan" and int(tokens["expires_in"]) > 0
        refreshed = client.post(
            "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200
    (asked,) = provider.token_requests
    assert asked["grant_type"] == "authorization_code" and asked["code_verifier"]


def test_unknown_users_are_refused_unless_creation_is_on(
    archive: Archive, tmp_path: Path, provider: Provider
) -> None:
    provider.claims = {"sub": "u-7", "preferred_username": "nurse.mai", "roles": ["x", "referring"]}
    with app_for(archive, tmp_path, provider) as client:
        refused = sign_in(client)
        assert refused.status_code == 403
        assert "has no account here" in refused.json()["detail"]
    with app_for(
        archive, tmp_path, provider, oidc_create_users=True, oidc_role_claim="roles"
    ) as client:
        handed_over(sign_in(client))
    with archive.sessions() as session:
        user = get_user(session, "nurse.mai")
        assert user is not None and user.role == "referring"


def test_a_disabled_user_is_refused(archive: Archive, tmp_path: Path, provider: Provider) -> None:
    with archive.sessions() as session:
        create_user(session, "dr.lan", "local-password", Role.RADIOLOGIST).disabled = True
        session.commit()
    with app_for(archive, tmp_path, provider) as client:
        refused = sign_in(client)
    assert refused.status_code == 403 and "disabled" in refused.json()["detail"]


def test_a_token_signed_by_another_key_is_refused(
    archive: Archive, tmp_path: Path, provider: Provider
) -> None:
    add_dr_lan(archive)
    provider.signing_key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    with app_for(archive, tmp_path, provider) as client:
        refused = sign_in(client)
    assert refused.status_code == 401
    assert "ID token was refused" in refused.json()["detail"]


def test_wrong_audience_or_issuer_is_refused(
    archive: Archive, tmp_path: Path, provider: Provider
) -> None:
    add_dr_lan(archive)
    with app_for(archive, tmp_path, provider) as client:
        for wrong in ({"aud": "another-app"}, {"iss": "http://evil.example"}):
            provider.claims = {"sub": "u-1001", "preferred_username": "dr.lan", **wrong}
            assert sign_in(client).status_code == 401, wrong


def test_a_callback_without_its_cookie_or_with_another_state_is_refused(
    archive: Archive, tmp_path: Path, provider: Provider
) -> None:
    with app_for(archive, tmp_path, provider) as client:
        start = client.get("/api/auth/oidc/login", follow_redirects=False)
        back = httpx.get(start.headers["location"], follow_redirects=False).headers["location"]
        forged = back.replace("state=", "state=x")
        assert client.get(forged, follow_redirects=False).status_code == 400
        client.cookies.clear()
        assert client.get(back, follow_redirects=False).status_code == 400
        # The sign-in cookie can never pass as an access token.
        flow = client.app.state.access_tokens.seal(
            {"state": "s"}, "oidc-sign-in", timedelta(minutes=1)
        )  # type: ignore[attr-defined]
        assert client.get("/api/me", headers={"Authorization": f"Bearer {flow}"}).status_code == 401


def test_without_an_issuer_the_routes_are_not_there(archive: Archive) -> None:
    with TestClient(create_app(archive)) as client:
        assert client.get("/api/auth/oidc/login").status_code == 404
        assert client.get("/api/auth/oidc/callback?code=x&state=y").status_code == 404
