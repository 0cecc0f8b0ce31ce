"""Who is calling: HTTP Basic or Bearer tokens, on every route but the public ones.

Basic is accepted everywhere (so standard DICOMweb clients work). argon2 is slow
on purpose, so a successful Basic check is remembered for a minute, keyed by a
hash of the credentials, instead of re-hashing on every request of a study load;
a bearer token's lookup is remembered the same way (never past its expiry).

The dependencies are ``async`` so a remembered caller costs no thread hop: a
viewer scrolling a study sends dozens of requests a second, and a sync
dependency is a round trip through the thread pool on each of them. Only a
cache miss (argon2 or a database read) goes to a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from storage.users import Role, authenticate, token_holder

_REMEMBER_SECONDS = 60.0
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="pacs", Bearer'}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    username: str
    role: Role


class _PrincipalCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    def put(self, key: str, principal: Principal, lifetime: float = _REMEMBER_SECONDS) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (principal, time.monotonic() + min(lifetime, _REMEMBER_SECONDS))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


principal_cache = _PrincipalCache()


async def current_user(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401 with a challenge."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    principal: Principal | None = None
    if scheme in ("basic", "bearer") and credentials:
        key = hashlib.sha256(f"{scheme} {credentials}".encode()).hexdigest()
        principal = principal_cache.get(key)
        if principal is None:
            sessions = request.app.state.archive.sessions
            resolve = _bearer if scheme == "bearer" else _basic
            principal = await run_in_threadpool(resolve, sessions, credentials, key)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "authentication required", headers=_CHALLENGE
        )
    request.state.principal = principal
    return principal


def require_role(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """Dependency factory: the caller must hold one of ``roles``."""

    async def check(principal: Annotated[Principal, Depends(current_user)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
        return principal

    return check


def _basic(sessions: sessionmaker[Session], credentials: str, key: str) -> Principal | None:
    try:
        username, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    with sessions() as session:
        user = authenticate(session, username, password)
        if user is None:
            return None
        principal = Principal(user.username, Role(user.role))
    principal_cache.put(key, principal)
    return principal


def _bearer(sessions: sessionmaker[Session], token: str, key: str) -> Principal | None:
    with sessions() as session:
        found = token_holder(session, token)
        if found is None:
            return None
        user, expires_at = found
        principal = Principal(user.username, Role(user.role))
    principal_cache.put(key, principal, (expires_at - datetime.now(UTC)).total_seconds())
    return principal
