"""Who is calling: HTTP Basic or Bearer tokens, on every route but the public ones.

Basic is accepted everywhere (so standard DICOMweb clients work). argon2 is slow
on purpose, so a successful Basic check is remembered for a minute, keyed by a
hash of the credentials, instead of re-hashing on every request of a study load.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker

from storage.users import Role, authenticate, user_for_token

_BASIC_CACHE_SECONDS = 60.0
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="pacs", Bearer'}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    username: str
    role: Role


class _BasicCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    def put(self, key: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (principal, time.monotonic() + _BASIC_CACHE_SECONDS)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


basic_cache = _BasicCache()


def current_user(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401 with a challenge."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    sessions = request.app.state.archive.sessions
    principal: Principal | None = None
    if scheme.lower() == "bearer" and credentials:
        with sessions() as session:
            user = user_for_token(session, credentials.strip())
            principal = Principal(user.username, Role(user.role)) if user else None
    elif scheme.lower() == "basic" and credentials:
        principal = _basic(sessions, credentials.strip())
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "authentication required", headers=_CHALLENGE
        )
    request.state.principal = principal
    return principal


def require_role(*roles: Role) -> Callable[[Principal], Principal]:
    """Dependency factory: the caller must hold one of ``roles``."""

    def check(principal: Annotated[Principal, Depends(current_user)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
        return principal

    return check


def _basic(sessions: sessionmaker[Session], credentials: str) -> Principal | None:
    key = hashlib.sha256(credentials.encode()).hexdigest()
    cached = basic_cache.get(key)
    if cached:
        return cached
    try:
        username, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    with sessions() as session:
        user = authenticate(session, username, password)
        if user is None:
            return None
        principal = Principal(user.username, Role(user.role))
    basic_cache.put(key, principal)
    return principal
