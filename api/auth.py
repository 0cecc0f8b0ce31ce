"""Who is calling: HTTP Basic or Bearer tokens, on every route but the public ones.

Basic is accepted everywhere (so standard DICOMweb clients work). argon2 is slow
on purpose, so a successful Basic check is remembered for a minute, keyed by a
hash of the credentials, instead of re-hashing on every request of a study load.
Bearer tokens are the short-lived JWT access tokens of :mod:`api.tokens`; the
check against the user's row is remembered for a few seconds (never past expiry).
Wrong passwords count towards the lock-out of :func:`storage.users.sign_in`.

The dependencies are ``async`` so a remembered caller costs no thread hop: a
viewer scrolling a study sends dozens of requests a second, and a sync
dependency is a round trip through the thread pool on each of them. Only a
cache miss (argon2 or a database read) goes to a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.audit import note_denied, note_failed_sign_in, note_refused_credentials
from api.tokens import Claims
from storage.models import User
from storage.scope import (
    EVERYTHING,
    Scope,
    Sees,
    study_of_link,
    study_of_report,
    study_visibility,
)
from storage.users import LockoutPolicy, Role, SignIn, SignInOutcome, sign_in

_REMEMBER_SECONDS = 60.0
_BEARER_REMEMBER_SECONDS = 10.0
log = logging.getLogger(__name__)
T = TypeVar("T")
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="pacs", Bearer'}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: who, in which role, for which sites.

    ``sites`` and ``referring_name_key`` decide which studies the caller sees
    (:func:`storage.scope.visible_studies`); ``user_id`` is ``None`` for callers that
    are not users (a share link).
    """

    username: str
    role: Role
    user_id: int | None = None
    sites: frozenset[str] = frozenset()
    referring_name_key: str = ""

    @property
    def scope(self) -> Scope:
        """The studies this caller may see (applied inside every query)."""
        sees = _SEES[self.role]
        if sees is Sees.EVERYTHING:
            return EVERYTHING
        return Scope(sees, self.user_id, self.sites, self.referring_name_key)

    @property
    def storing_scope(self) -> Scope:
        """The studies this caller may add instances to: those of its own sites."""
        if self.role is Role.ADMIN:
            return EVERYTHING
        return Scope(Sees.SITES, None, self.sites)

    @property
    def site(self) -> str:
        """The site what this caller stores belongs to (its first, by name)."""
        return min(self.sites, default="")


_SEES = {
    Role.ADMIN: Sees.EVERYTHING,
    Role.RADIOLOGIST: Sees.SITES,
    Role.REFERRING: Sees.SHARED,
    Role.MODALITY: Sees.NOTHING,
}


def principal_for(user: User) -> Principal:
    """The principal of a signed-in ``user`` (the one place one is built from a row)."""
    return Principal(
        user.username,
        Role(user.role),
        user.id,
        frozenset(s.site for s in user.sites),
        user.referring_name_key,
    )


class Remembered(Generic[T]):
    """A small thread-safe map whose entries live at most :data:`_REMEMBER_SECONDS`."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[T, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    def put(self, key: str, value: T, lifetime: float = _REMEMBER_SECONDS) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (value, time.monotonic() + min(lifetime, _REMEMBER_SECONDS))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass
class Memory:
    """What one application remembers of its callers.

    Per application (``app.state.memory``, made by ``create_app``), not per module:
    two apps in one process (tests; a revocation test with two "processes") must
    not hand each other remembered callers.
    """

    principals: Remembered[Principal] = field(default_factory=Remembered)
    studies: Remembered[bool] = field(default_factory=Remembered)  # visible, per caller
    share_pins: Remembered[bool] = field(default_factory=Remembered)  # (token, PIN) accepted

    def forget_callers(self) -> None:
        """After a change of users, passwords or grants: ask the database again."""
        self.principals.clear()
        self.studies.clear()


def memory(request: Request) -> Memory:
    """The :class:`Memory` of the application serving ``request``."""
    remembered: Memory = request.app.state.memory
    return remembered


async def current_user(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401 with a challenge."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    principal: Principal | None = None
    if scheme in ("basic", "bearer") and credentials:
        key = hashlib.sha256(f"{scheme} {credentials}".encode()).hexdigest()
        principal = memory(request).principals.get(key)
        if principal is None and scheme == "bearer":
            principal = await _bearer(request, credentials, key)
        elif principal is None:
            principal = await run_in_threadpool(_basic, request, credentials, key)
    if principal is None:
        if header:  # credentials presented and refused (a wrong password is noted already)
            note_refused_credentials(request, scheme, credentials)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "authentication required", headers=_CHALLENGE
        )
    request.state.principal = principal
    return principal


def require_role(
    *roles: Role, storing: bool = False, study_gate: bool = True
) -> Callable[..., Awaitable[Principal]]:
    """Dependency factory: the caller must hold one of ``roles``.

    A route whose path names a study (``{study}``), or a report or share link of one
    (``{report_id}``, ``{link_id}``), is also closed to callers who may not see that
    study (with ``storing``: may not add to it): 404, as if it did not exist, so a
    study of another site does not leak its existence. This runs before the route
    and before its body is validated. Only a route whose own query is filtered by
    the caller's scope and that tells "not visible" from "empty" itself may turn the
    gate off (``study_gate=False``: QIDO under a study, which saves a query).
    """

    async def check(
        request: Request, principal: Annotated[Principal, Depends(current_user)]
    ) -> Principal:
        if principal.role not in roles:
            note_denied(request)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
        scope = principal.storing_scope if storing else principal.scope
        if study_gate and not scope.everything:
            await _check_named_study(request, principal, scope)
        return principal

    return check


async def _check_named_study(request: Request, principal: Principal, scope: Scope) -> None:
    params = request.path_params
    if "study" in params:
        await check_study(request, principal, str(params["study"]), scope)
        return
    for name, study_of in (("report_id", study_of_report), ("link_id", study_of_link)):
        value = str(params.get(name, ""))
        if value.isascii() and value.isdigit() and len(value) < 19:  # else the route's 422
            study = await run_in_threadpool(_ask, request, study_of, int(value))
            if study is not None:
                await check_study(request, principal, study, scope)


async def check_study(
    request: Request, principal: Principal, study: str, scope: Scope | None = None
) -> None:
    """404 unless ``principal`` may see ``study`` (or there is no such study yet).

    A visible study is remembered for a minute per caller, so a viewer scrolling
    one study pays one query, not one per slice; a study that is not visible is
    asked again each time, so a new grant works at once.
    """
    scope = scope or principal.scope
    if scope.everything:
        return
    key = f"{principal.username}\0{scope.sees}\0{study}"
    if memory(request).studies.get(key):
        return

    def ask(session: Session, uid: str) -> bool | None:
        return study_visibility(session, scope, uid)

    visible = await run_in_threadpool(_ask, request, ask, study)
    if visible is False:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    if visible:
        memory(request).studies.put(key, True)


def _ask(request: Request, question: Callable[..., T], value: object) -> T:
    with request.app.state.archive.sessions() as session:
        return question(session, value)


def checked_sign_in(request: Request, session: Session, username: str, password: str) -> User:
    """The user whose password this is, else 401 with the reason (wrong, locked, disabled).

    The lock-out counter is committed either way; a refusal goes through
    :func:`_sign_in_failed`. Used by Basic and by ``POST /api/auth/token``.
    """
    settings = request.app.state.settings
    policy = LockoutPolicy(
        settings.sign_in_max_failures, timedelta(minutes=settings.sign_in_lockout_minutes)
    )
    result = sign_in(session, username, password, policy)
    session.commit()
    if result.outcome is SignInOutcome.OK and result.user is not None:
        return result.user
    _sign_in_failed(request, username, result.outcome.value)
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, _refusal(result), headers=_CHALLENGE)


def _refusal(result: SignIn) -> str:
    if result.outcome is SignInOutcome.LOCKED and result.locked_until is not None:
        return (
            "this account is locked after repeated failed sign-ins; try again after "
            f"{result.locked_until:%Y-%m-%d %H:%M} UTC"
        )
    if result.outcome is SignInOutcome.DISABLED:
        return "this account is disabled"
    return "wrong username or password"


def _sign_in_failed(request: Request, username: str, reason: str) -> None:
    """The one place a refused sign-in (Basic, token, OIDC) is reported: logged, and
    written to the audit trail ("User Authentication", outcome 4) with the response."""
    client = request.client.host if request.client else ""
    log.warning("sign-in refused for %r from %s: %s", username[:64], client, reason)
    note_failed_sign_in(request, username)


def _basic(request: Request, credentials: str, key: str) -> Principal | None:
    try:
        username, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    with request.app.state.archive.sessions() as session:
        principal = principal_for(checked_sign_in(request, session, username, password))
    memory(request).principals.put(key, principal)
    return principal


async def _bearer(request: Request, token: str, key: str) -> Principal | None:
    """The principal of a valid access token (:mod:`api.tokens`), or ``None``.

    The signature and expiry are checked here (no database); the user's row is read to
    compare ``token_version`` and ``disabled``, then remembered for
    :data:`_BEARER_REMEMBER_SECONDS`. A revocation in this process clears the memory
    at once; one made by another process (``pacs user passwd``, another ``--only
    http`` server) reaches this one within those seconds at most.
    """
    claims = request.app.state.access_tokens.verify(token)
    if claims is None:
        return None
    sessions = request.app.state.archive.sessions
    principal = await run_in_threadpool(_token_holder, sessions, claims)
    if principal is not None:
        left = (claims.expires - datetime.now(UTC)).total_seconds()
        memory(request).principals.put(key, principal, min(left, _BEARER_REMEMBER_SECONDS))
    return principal


def _token_holder(sessions: sessionmaker[Session], claims: Claims) -> Principal | None:
    with sessions() as session:
        user = session.get(User, claims.user_id)
        if user is None or user.disabled or user.token_version != claims.version:
            return None
        return principal_for(user)
