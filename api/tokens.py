"""Access tokens: short-lived JWTs (RFC 7519) signed with HS256 (RFC 7518 §3.2).

An access token says who (``sub`` the username, ``uid`` the user's id), in which
role, and ``ver``: the user's ``token_version`` when it was issued. Its signature
and ``exp`` are checked without the database; :mod:`api.auth` then compares ``ver``
and the ``disabled`` flag with the user's row, so bumping ``token_version``
(password change, disabling) revokes every access token of the user at once.

The signing key is the ``jwt_secret`` setting, else a random key generated once
into ``<data dir>/jwt-secret`` (mode 0600), so every ``pacs serve --only http``
process sharing a data folder signs and verifies with the same key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt

from storage.models import User

ALGORITHM = "HS256"
SECRET_FILE = "jwt-secret"


@dataclass(frozen=True)
class Claims:
    """The parts of a verified access token the server acts on."""

    user_id: int
    username: str
    version: int
    expires: datetime


class AccessTokens:
    """Issues and verifies access tokens with one key and one lifetime."""

    def __init__(self, secret: bytes, lifetime: timedelta) -> None:
        self._secret = secret
        self.lifetime = lifetime

    def issue(self, user: User, lifetime: timedelta | None = None) -> tuple[str, datetime]:
        """A signed access token for ``user`` and the instant it expires."""
        now = datetime.now(UTC).replace(microsecond=0)
        expires = now + (lifetime or self.lifetime)
        claims = {
            "sub": user.username,
            "uid": user.id,
            "role": user.role,
            "ver": user.token_version,
            "iat": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires

    def verify(self, token: str) -> Claims | None:
        """The claims of a well-signed, unexpired token of ours, else ``None``.

        Only HS256 is accepted (never ``none`` or an algorithm the token names).
        """
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub", "uid", "ver"]},
            )
        except jwt.PyJWTError:
            return None
        uid, ver = claims["uid"], claims["ver"]
        if type(uid) is not int or type(ver) is not int or not isinstance(claims["sub"], str):
            return None
        return Claims(uid, claims["sub"], ver, datetime.fromtimestamp(claims["exp"], UTC))

    def seal(self, payload: dict[str, str], purpose: str, lifetime: timedelta) -> str:
        """``payload`` signed for one ``purpose`` (the ``aud`` claim) until ``lifetime``
        ends: state a browser carries between two requests (the OIDC sign-in's cookie).
        It can never pass :meth:`verify`, which refuses any token with an audience."""
        claims = {**payload, "aud": purpose, "exp": datetime.now(UTC) + lifetime}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def unseal(self, token: str, purpose: str) -> dict[str, str] | None:
        """The payload of :meth:`seal` for ``purpose``, if intact and unexpired."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], audience=purpose)
        except jwt.PyJWTError:
            return None
        return {key: value for key, value in claims.items() if isinstance(value, str)}


def signing_secret(configured: str | None, data_dir: Path) -> bytes:
    """The HS256 key: ``configured``, else the data folder's key file (made if missing).

    The file is created under a temporary name and linked into place, which fails if
    another process got there first; then that process's key is read instead. So
    processes starting together agree, and none ever reads a half-written key.
    """
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        temporary = data_dir / f".{SECRET_FILE}.{uuid.uuid4().hex}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_urlsafe(48))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return path.read_text().strip().encode()
