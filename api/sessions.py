"""``/api/auth``: signing in, refreshing and signing out.

``POST /api/auth/token`` exchanges a username and password for a short-lived
access token (a JWT, :mod:`api.tokens`, sent as ``Authorization: Bearer``) and a
refresh token. ``POST /api/auth/refresh`` exchanges a refresh token for a new pair;
the refresh token used is gone (rotation, RFC 9700 §4.14.2), so a stolen one that
was already used is refused. ``POST /api/auth/logout`` deletes a refresh token
(RFC 7009 style: unknown tokens are not an error).

The token endpoint is rate limited per client address (429 with Retry-After);
wrong passwords also count towards the account's lock-out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from api.auth import checked_sign_in
from storage.models import User
from storage.users import issue_refresh_token, revoke_refresh_token, use_refresh_token

router = APIRouter(prefix="/api/auth", tags=["auth"])


class TokenRequest(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=256)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int  # seconds the access token lives (RFC 6749 §5.1)
    expires_at: str
    refresh_token: str
    refresh_expires_at: str


@router.post("/token")
def token(request: Request, body: TokenRequest) -> TokenResponse:
    """Exchange a username and password for an access token and a refresh token."""
    client = request.client.host if request.client else ""
    wait = request.app.state.sign_in_limiter.take(client)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many sign-in attempts from this address; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    with request.app.state.archive.sessions() as session:
        user = checked_sign_in(request, session, body.username, body.password)
        settings = request.app.state.settings
        lifetime = timedelta(seconds=settings.refresh_token_seconds or settings.token_ttl_seconds)
        refresh, refresh_expires = issue_refresh_token(session, user, lifetime)
        answer = token_pair(request, user, refresh, refresh_expires)
        session.commit()
    return answer


@router.post("/refresh")
def refresh(request: Request, body: RefreshRequest) -> TokenResponse:
    """A new access token and a new refresh token; the one presented stops working."""
    with request.app.state.archive.sessions() as session:
        rotated = use_refresh_token(session, body.refresh_token)
        if rotated is None:
            session.rollback()
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "this refresh token is unknown, used, expired or revoked; sign in again",
            )
        user, new, expires = rotated
        answer = token_pair(request, user, new, expires)
        session.commit()
    return answer


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, body: RefreshRequest) -> Response:
    """Revoke a refresh token. The access token lives on until it expires (minutes)."""
    with request.app.state.archive.sessions() as session:
        revoke_refresh_token(session, body.refresh_token)
        session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def token_pair(
    request: Request, user: User, refresh: str, refresh_expires: datetime
) -> TokenResponse:
    """The answer of every sign-in: a new access token beside the refresh token."""
    access, expires = request.app.state.access_tokens.issue(user)
    return TokenResponse(
        access_token=access,
        expires_in=round((expires - datetime.now(UTC)).total_seconds()),
        expires_at=expires.isoformat(),
        refresh_token=refresh,
        refresh_expires_at=refresh_expires.isoformat(),
    )
