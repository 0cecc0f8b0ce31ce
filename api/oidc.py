"""Optional OpenID Connect sign-in, for hospitals that run an identity provider.

The authorization code flow of OpenID Connect Core 1.0 §3.1 with PKCE (RFC 7636,
S256): ``GET /api/auth/oidc/login`` sends the browser to the provider;
``GET /api/auth/oidc/callback`` takes the code back, exchanges it at the token
endpoint and verifies the ID token (§3.1.3.7): signature with a key from the
provider's JWKS (asymmetric algorithms only), ``iss``, ``aud`` / ``azp``, ``exp``
and the ``nonce`` of this sign-in. The endpoints come from the discovery document
(OpenID Connect Discovery 1.0) at ``<oidc_issuer>/.well-known/openid-configuration``;
discovery and keys are remembered for an hour, keys fetched again at once when a
token names one we do not know (the provider rotated).

The state, nonce and PKCE verifier travel in a short-lived cookie signed with our
token key, so the callback may land on any ``--only http`` process.

Mapping to a local user: the ID token's ``preferred_username`` (else ``sub``) is
the local username. An existing user signs in as it is (role and sites managed
here); an unknown one is created on first sign-in only when ``oidc_create_users``
is on, with the role from the ``oidc_role_claim`` claim when that names one of our
roles, else ``oidc_default_role``, and an unusable random password. A disabled user
is refused. Then our own access and refresh tokens are issued (:mod:`api.sessions`)
and handed to the viewer in the URL fragment of ``/viewer/#/oidc?...``, which
browsers never send to a server; the viewer stores them and clears the fragment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import RedirectResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel

from api.auth import _sign_in_failed
from api.sessions import token_pair
from storage.users import Role, UserError, create_user, get_user, issue_refresh_token

router = APIRouter(prefix="/api/auth/oidc", tags=["auth"])

COOKIE = "pacs_oidc"
_FLOW = timedelta(minutes=10)  # time to sign in at the provider
_PURPOSE = "oidc-sign-in"
_REMEMBER_SECONDS = 3600.0
_TIMEOUT_SECONDS = 10.0
# Never "none", nor HS* (which would make the client secret a signing key).
_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}


class ProviderError(Exception):
    """The provider could not be reached or answered something unusable."""


class Provider:
    """One issuer's discovery document and keys, fetched lazily and remembered."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer.rstrip("/")
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched = 0.0

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None or time.monotonic() - self._fetched > _REMEMBER_SECONDS:
                found = fetch_json(f"{self.issuer}/.well-known/openid-configuration")
                if str(found.get("issuer", "")).rstrip("/") != self.issuer:  # Discovery §4.3
                    raise ProviderError("the discovery document names another issuer")
                for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(found.get(name), str):
                        raise ProviderError(f"the discovery document has no {name}")
                self._metadata, self._keys, self._fetched = found, None, time.monotonic()
            return self._metadata

    def keys(self, again: bool = False) -> KeySet:
        uri = self.metadata()["jwks_uri"]
        with self._lock:
            if self._keys is None or again:
                try:
                    self._keys = KeySet.import_key_set(fetch_json(uri))  # type: ignore[arg-type]
                except (JoseError, ValueError, TypeError) as exc:
                    raise ProviderError(f"unusable JWKS: {exc}") from exc
            return self._keys


def fetch_json(url: str, form: dict[str, str] | None = None, basic: str = "") -> dict[str, Any]:
    """GET (or POST ``form`` to) the provider; its JSON object answer."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ProviderError(f"not an HTTP URL: {url[:200]}")
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    outgoing = urllib.request.Request(url, data=data, headers={"Accept": "application/json"})
    if basic:
        outgoing.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(outgoing, timeout=_TIMEOUT_SECONDS) as answer:
            body = json.loads(answer.read(1024 * 1024))
    except urllib.error.HTTPError as exc:
        raise ProviderError(f"{url[:200]} answered {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise ProviderError(f"{url[:200]}: {exc}") from exc
    if not isinstance(body, dict):
        raise ProviderError(f"{url[:200]} did not answer a JSON object")
    return body


def _provider(request: Request) -> Provider:
    issuer = request.app.state.settings.oidc_issuer
    if not issuer:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "OpenID Connect sign-in is not set up")
    state = request.app.state
    if getattr(state, "oidc_provider", None) is None:
        state.oidc_provider = Provider(issuer)
    provider: Provider = state.oidc_provider
    return provider


def _redirect_uri(request: Request) -> str:
    public = request.app.state.settings.public_url.rstrip("/")
    return f"{public}/api/auth/oidc/callback" if public else str(request.url_for("oidc_callback"))


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcStatus(BaseModel):
    enabled: bool


@router.get("")
def oidc_status(request: Request) -> OidcStatus:
    """Whether sign-in through the identity provider is offered (the viewer asks)."""
    return OidcStatus(enabled=bool(request.app.state.settings.oidc_issuer))


@router.get("/login")
def oidc_login(request: Request) -> RedirectResponse:
    """Send the browser to the identity provider to sign in."""
    settings = request.app.state.settings
    try:
        metadata = _provider(request).metadata()
    except ProviderError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"identity provider: {exc}") from exc
    flow = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "verifier": secrets.token_urlsafe(48),
    }
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": settings.oidc_client_id,
            "redirect_uri": _redirect_uri(request),
            "scope": settings.oidc_scopes,
            "state": flow["state"],
            "nonce": flow["nonce"],
            "code_challenge": _s256(flow["verifier"]),
            "code_challenge_method": "S256",
        }
    )
    endpoint = metadata["authorization_endpoint"]
    separator = "&" if "?" in endpoint else "?"
    response = RedirectResponse(f"{endpoint}{separator}{query}", status.HTTP_302_FOUND)
    response.set_cookie(
        COOKIE,
        request.app.state.access_tokens.seal(flow, _PURPOSE, _FLOW),
        max_age=int(_FLOW.total_seconds()),
        path="/api/auth/oidc",
        httponly=True,
        samesite="lax",  # sent on the provider's top-level redirect back to us
        secure=request.url.scheme == "https" or settings.behind_tls_proxy,
    )
    return response


@router.get("/callback", name="oidc_callback")
def oidc_callback(
    request: Request, code: str = "", state: str = "", error: str = ""
) -> RedirectResponse:
    """Finish the sign-in: verify the provider's answer, then hand our tokens over."""
    provider = _provider(request)
    if error:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"the provider said: {error[:200]}")
    flow = request.app.state.access_tokens.unseal(request.cookies.get(COOKIE, ""), _PURPOSE)
    if flow is None or not state or not hmac.compare_digest(flow.get("state", ""), state):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "this sign-in expired or was not started here; start again",
        )
    if not code or len(code) > 2048:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the provider sent no code")
    try:
        claims = _verified_id_token(request, provider, code, flow)
    except ProviderError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"identity provider: {exc}") from exc
    username = str(claims.get("preferred_username") or claims["sub"])
    with request.app.state.archive.sessions() as session:
        user = get_user(session, username)
        if user is None and request.app.state.settings.oidc_create_users:
            try:
                user = create_user(
                    session, username, secrets.token_urlsafe(32), _role(request, claims)
                )
            except UserError as exc:
                raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
        if user is None or user.disabled:
            _sign_in_failed(request, username, "oidc: no such local user or disabled")
            why = "is disabled" if user else "has no account here; ask an administrator"
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"user {username!r} {why}")
        settings = request.app.state.settings
        lifetime = timedelta(seconds=settings.refresh_token_seconds or settings.token_ttl_seconds)
        refresh, refresh_expires = issue_refresh_token(session, user, lifetime)
        tokens = token_pair(request, user, refresh, refresh_expires)
        session.commit()
    fragment = urllib.parse.urlencode(
        {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_in": tokens.expires_in,
            "username": username,
        }
    )
    response = RedirectResponse(f"/viewer/#/oidc?{fragment}", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/api/auth/oidc")
    return response


def _verified_id_token(
    request: Request, provider: Provider, code: str, flow: dict[str, str]
) -> dict[str, Any]:
    """Redeem ``code`` and verify the ID token it brings (Core §3.1.3.5 and §3.1.3.7)."""
    settings = request.app.state.settings
    metadata = provider.metadata()
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _redirect_uri(request),
        "code_verifier": flow["verifier"],
        "client_id": settings.oidc_client_id,
    }
    basic = ""
    if settings.oidc_client_secret:  # client_secret_basic, the default method (Core §9)
        pair = f"{_quoted(settings.oidc_client_id)}:{_quoted(settings.oidc_client_secret)}"
        basic = base64.b64encode(pair.encode()).decode()
    answer = fetch_json(metadata["token_endpoint"], form, basic)
    id_token = answer.get("id_token")
    if not isinstance(id_token, str):
        raise ProviderError("the token endpoint sent no id_token")
    offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = [alg for alg in offered if alg in _ALGORITHMS]
    try:
        try:
            token = jwt.decode(id_token, provider.keys(), algorithms=algorithms)
        except JoseError:  # perhaps a key the provider rotated in since we fetched
            token = jwt.decode(id_token, provider.keys(again=True), algorithms=algorithms)
        jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": provider.issuer},
            aud={"essential": True, "value": settings.oidc_client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": flow["nonce"]},
        ).validate(token.claims)
    except (JoseError, ValueError) as exc:
        _sign_in_failed(request, "(oidc)", f"id_token refused: {exc}")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"the provider's ID token was refused: {exc}"
        ) from exc
    claims = token.claims
    audience = claims["aud"]
    several = isinstance(audience, list) and len(audience) > 1
    if several and claims.get("azp") != settings.oidc_client_id:  # Core §3.1.3.7 items 4, 5
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the ID token is for another client")
    username = str(claims.get("preferred_username") or claims["sub"])
    if not 0 < len(username) <= 64 or not username.isprintable():
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the provider's user name is unusable")
    return claims


def _role(request: Request, claims: dict[str, Any]) -> Role:
    """The role for a user made at first sign-in: the first of ours the claim names."""
    settings = request.app.state.settings
    named = claims.get(settings.oidc_role_claim) if settings.oidc_role_claim else None
    for value in named if isinstance(named, list) else [named]:
        if isinstance(value, str) and value in {role.value for role in Role}:
            return Role(value)
    return Role(settings.oidc_default_role)


def _quoted(value: str) -> str:
    # client_secret_basic form-encodes id and secret before Base64 (RFC 6749 §2.3.1).
    return urllib.parse.quote(value, safe="")
