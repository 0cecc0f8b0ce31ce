"""Users, roles, passwords (argon2id) and bearer tokens."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.models import ApiToken, User

_hasher = PasswordHasher()


class Role(StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    REFERRING = "referring"
    MODALITY = "modality"  # may only store


class UserError(ValueError):
    pass


def create_user(session: Session, username: str, password: str, role: Role) -> User:
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
    )
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def set_password(session: Session, username: str, password: str) -> None:
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    if len(password) < 8:
        raise UserError("a password needs at least 8 characters")
    user.password_hash = _hasher.hash(password)
    # A new password ends every session opened with the old one.
    session.execute(delete(ApiToken).where(ApiToken.user_pk == user.id))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The user if the password is right, else ``None`` (same cost either way)."""
    user = get_user(session, username)
    target = user.password_hash if user else _DUMMY_HASH
    try:
        _hasher.verify(target, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def issue_token(session: Session, user: User, ttl: timedelta) -> tuple[str, datetime]:
    """A new random bearer token for ``user``; only its hash is stored."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    expires = now + ttl
    session.add(
        ApiToken(token_sha256=_digest(token), user_pk=user.id, created_at=now, expires_at=expires)
    )
    session.execute(delete(ApiToken).where(ApiToken.expires_at < now))
    return token, expires


def token_holder(session: Session, token: str) -> tuple[User, datetime] | None:
    """The user a live bearer token belongs to, and when the token expires."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == _digest(token)))
    if row is None:
        return None
    expires_at = _aware(row.expires_at)
    if expires_at < datetime.now(UTC):
        return None
    return row.user, expires_at


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
