"""Users, roles, passwords (argon2id), the sign-in lock-out and refresh tokens.

Access tokens are JWTs made by :mod:`api.tokens`; what they are checked against
lives here: ``users.token_version`` (bumped by :func:`end_sessions`) and
``users.disabled``. Refresh tokens are random strings kept only as SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from pacs.charset import search_key
from storage.models import ApiToken, User
from storage.scope import GrantError, set_user_sites

_hasher = PasswordHasher()


class Role(StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    REFERRING = "referring"
    MODALITY = "modality"  # may only store


# Studies from nodes without a configured site, and imports without ``--site``, belong
# to the site named "" -- the archive's own; users get it unless told otherwise.
LOCAL_SITE = ""


class UserError(ValueError):
    pass


def create_user(
    session: Session,
    username: str,
    password: str,
    role: Role,
    sites: Iterable[str] = (LOCAL_SITE,),
    referring_name: str = "",
) -> User:
    """A new user working for ``sites`` (default: this archive's own, :data:`LOCAL_SITE`).

    ``referring_name`` maps a ``referring`` user to the ReferringPhysicianName of the
    studies it may read (compared folded, like name search).
    """
    if not username or len(username) > 64 or not username.isprintable():
        raise UserError("a username is 1 to 64 printable characters")
    if len(password) < 8:
        raise UserError("a password needs at least 8 characters")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise UserError(f"user {username!r} already exists")
    user = User(
        username=username,
        password_hash=_hasher.hash(password),
        role=Role(role).value,
        created_at=datetime.now(UTC),
        referring_name_key=search_key(referring_name) if referring_name else "",
    )
    try:
        set_user_sites(user, sites)
    except GrantError as exc:
        raise UserError(str(exc)) from exc
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def set_password(session: Session, username: str, password: str) -> None:
    """A new password; it ends every session opened with the old one."""
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    if len(password) < 8:
        raise UserError("a password needs at least 8 characters")
    user.password_hash = _hasher.hash(password)
    user.failed_sign_ins, user.locked_until = 0, None
    end_sessions(session, user)


def set_disabled(session: Session, username: str, disabled: bool) -> User:
    """Disable (every session ends, no sign-in works) or enable a user again."""
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    user.disabled = disabled
    if disabled:
        end_sessions(session, user)
    return user


def end_sessions(session: Session, user: User) -> None:
    """Revoke every token of ``user``: access tokens carry the old ``token_version``
    (so they stop verifying) and refresh tokens are deleted."""
    user.token_version = User.token_version + 1
    session.execute(delete(ApiToken).where(ApiToken.user_pk == user.id))
    session.flush()


@dataclass(frozen=True)
class LockoutPolicy:
    """``max_failures`` wrong passwords in a row lock an account for ``lock_for``."""

    max_failures: int = 5
    lock_for: timedelta = timedelta(minutes=15)


class SignInOutcome(StrEnum):
    OK = "ok"
    WRONG = "wrong username or password"
    LOCKED = "locked after repeated failed sign-ins"
    DISABLED = "disabled"


@dataclass(frozen=True)
class SignIn:
    """What a sign-in came to; ``user`` is set when the account exists."""

    outcome: SignInOutcome
    user: User | None = None
    locked_until: datetime | None = None


def sign_in(
    session: Session, username: str, password: str, policy: LockoutPolicy | None = None
) -> SignIn:
    """Check a password, counting failures towards the lock-out of ``policy``.

    Every call verifies one argon2 hash, whatever the outcome: an unknown user or a
    locked account is checked against a dummy hash, so the time taken tells nothing
    (a locked account's password is not tried at all, or guessing could go on).
    Writes the failure counter; the caller commits, also when the sign-in failed.
    """
    user = get_user(session, username)
    now = datetime.now(UTC)
    locked_until = _aware(user.locked_until) if user and user.locked_until else None
    locked = locked_until is not None and locked_until > now
    right = _verify(user.password_hash if user and not locked else _DUMMY_HASH, password)
    if user is None:
        return SignIn(SignInOutcome.WRONG)
    if locked:
        return SignIn(SignInOutcome.LOCKED, user, locked_until)
    if not right:
        return _failed(session, user, policy or LockoutPolicy(), now)
    if user.failed_sign_ins or user.locked_until:
        user.failed_sign_ins, user.locked_until = 0, None
    if user.disabled:
        return SignIn(SignInOutcome.DISABLED, user)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return SignIn(SignInOutcome.OK, user)


def _failed(session: Session, user: User, policy: LockoutPolicy, now: datetime) -> SignIn:
    # One UPDATE with the increment in SQL, so concurrent wrong guesses all count.
    failures = session.execute(
        update(User)
        .where(User.id == user.id)
        .values(failed_sign_ins=User.failed_sign_ins + 1)
        .returning(User.failed_sign_ins)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    if failures < policy.max_failures:
        return SignIn(SignInOutcome.WRONG, user)
    until = now + policy.lock_for
    session.execute(
        update(User)
        .where(User.id == user.id)
        .values(failed_sign_ins=0, locked_until=until)
        .execution_options(synchronize_session=False)
    )
    return SignIn(SignInOutcome.LOCKED, user, until)


def issue_refresh_token(
    session: Session, user: User, expires: datetime | timedelta
) -> tuple[str, datetime]:
    """A new random refresh token for ``user``, valid for ``expires`` (a lifetime or an
    instant); only its SHA-256 is stored. Expired tokens of anyone are swept out."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    until = now + expires if isinstance(expires, timedelta) else expires
    session.add(
        ApiToken(token_sha256=_digest(token), user_pk=user.id, created_at=now, expires_at=until)
    )
    session.execute(delete(ApiToken).where(ApiToken.expires_at < now))
    return token, until


def use_refresh_token(session: Session, token: str) -> tuple[User, str, datetime] | None:
    """Rotate a refresh token: the presented one is deleted and a new one issued that
    ends when the old one would have (a session's length is fixed at sign-in).

    ``None`` for an unknown, already used, expired or revoked token, or a disabled
    user. The DELETE decides: of two requests racing with one token only the one
    that deleted the row gets a new token.
    """
    gone = session.execute(
        delete(ApiToken)
        .where(ApiToken.token_sha256 == _digest(token))
        .returning(ApiToken.user_pk, ApiToken.expires_at)
    ).one_or_none()
    if gone is None:
        return None
    user_pk, expires_at = gone
    expires_at = _aware(expires_at)
    user = session.get(User, user_pk)
    if user is None or user.disabled or expires_at <= datetime.now(UTC):
        return None
    new, until = issue_refresh_token(session, user, expires_at)
    return user, new, until


def revoke_refresh_token(session: Session, token: str) -> None:
    """Sign out: the refresh token stops working (unknown tokens are ignored)."""
    session.execute(delete(ApiToken).where(ApiToken.token_sha256 == _digest(token)))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
