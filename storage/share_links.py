"""Share links: one study, opened without an account, for a limited time.

A radiologist or admin creates a link for a study: a random token (only its SHA-256
is stored, like API tokens), an expiry, and optionally a PIN given to the recipient
by another channel (argon2-hashed). Whoever presents the token (and the PIN) sees
that study and nothing else; the link stops working when it expires or is revoked,
and after :data:`MAX_FAILED_PINS` wrong PINs it revokes itself (a 4-digit PIN would
otherwise be guessed). Errors: :class:`LinkUnknown` (no such token, or a link of
another study), :class:`LinkGone` (expired or revoked), :class:`WrongPin`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.header import is_valid_uid
from storage.models import ShareLink, Study
from storage.retrieve import as_utc
from storage.scope import EVERYTHING, Scope, visible_studies

MAX_FAILED_PINS = 5
MAX_LIFETIME = timedelta(days=30)
_PIN = re.compile(r"[0-9]{4,12}")
_hasher = PasswordHasher()


class ShareLinkError(ValueError):
    pass


class LinkUnknown(ShareLinkError):
    """No such link (or study)."""


class LinkGone(ShareLinkError):
    """The link expired or was revoked."""


class WrongPin(ShareLinkError):
    """The link needs a PIN, and this is not it."""


class LinkInvalid(ShareLinkError):
    """A malformed request: lifetime out of range, PIN not 4-12 digits."""


@dataclass(frozen=True)
class ShareLinkView:
    id: int
    study_instance_uid: str
    created_by: str
    has_pin: bool
    uses: int
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and self.expires_at > datetime.now(UTC)


def create_link(
    session: Session, study_uid: str, creator: str, lifetime: timedelta, pin: str = ""
) -> tuple[str, ShareLinkView]:
    """A new link to the study: (the token, to hand out once; the link)."""
    if not timedelta(minutes=5) <= lifetime <= MAX_LIFETIME:
        raise LinkInvalid(f"a link lives 5 minutes to {MAX_LIFETIME.days} days")
    if pin and not _PIN.fullmatch(pin):
        raise LinkInvalid("a PIN is 4 to 12 digits")
    study = (
        session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if is_valid_uid(study_uid)
        else None
    )
    if study is None:
        raise LinkUnknown(f"no study {study_uid[:80]}")
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    link = ShareLink(
        token_sha256=_digest(token),
        study_pk=study.id,
        created_by=creator[:64],
        pin_hash=_hasher.hash(pin) if pin else "",
        failed_pins=0,
        uses=0,
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(link)
    session.flush()
    return token, _view(link, study_uid)


def study_links(session: Session, study_uid: str) -> list[ShareLinkView]:
    rows = session.execute(
        select(ShareLink)
        .join(Study, ShareLink.study_pk == Study.id)
        .where(Study.study_instance_uid == study_uid)
        .order_by(ShareLink.id)
    ).scalars()
    return [_view(link, study_uid) for link in rows]


def revoke_link(session: Session, link_id: int, scope: Scope = EVERYTHING) -> ShareLinkView:
    """Revoke a link; :class:`LinkUnknown` also when ``scope`` may not see its study."""
    link = session.scalar(
        select(ShareLink)
        .join(Study, ShareLink.study_pk == Study.id)
        .where(ShareLink.id == link_id, visible_studies(scope))
    )
    if link is None:
        raise LinkUnknown(f"no share link {link_id}")
    if link.revoked_at is None:
        link.revoked_at = datetime.now(UTC)
        session.flush()
    return _view(link, link.study.study_instance_uid)


def open_link(
    session: Session, token: str, pin: str = "", *, pin_verified: bool = False
) -> ShareLinkView:
    """The link this token opens, if it still works and the PIN is right; counts the
    use. The caller commits (a wrong PIN is counted, too). ``pin_verified``: the
    caller checked this very PIN against this link moments ago (argon2 is slow on
    purpose; a recipient scrolling a study would pay it on every slice)."""
    link = session.scalar(select(ShareLink).where(ShareLink.token_sha256 == _digest(token)))
    if link is None:
        raise LinkUnknown("no such share link")
    study_uid = link.study.study_instance_uid
    view = _view(link, study_uid)
    if not view.active:
        raise LinkGone("this share link has expired or was revoked")
    if link.pin_hash and not pin_verified and not _pin_matches(link.pin_hash, pin):
        failed = link.failed_pins + 1
        values: dict[str, object] = {"failed_pins": failed}
        if failed >= MAX_FAILED_PINS:
            values["revoked_at"] = datetime.now(UTC)
        session.execute(update(ShareLink).where(ShareLink.id == link.id).values(**values))
        raise WrongPin("this share link needs its PIN" if not pin else "wrong PIN")
    session.execute(
        update(ShareLink).where(ShareLink.id == link.id).values(uses=ShareLink.uses + 1)
    )
    return view


def _pin_matches(pin_hash: str, pin: str) -> bool:
    try:
        return bool(pin) and _hasher.verify(pin_hash, pin)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _view(link: ShareLink, study_uid: str) -> ShareLinkView:
    return ShareLinkView(
        id=link.id,
        study_instance_uid=study_uid,
        created_by=link.created_by,
        has_pin=bool(link.pin_hash),
        uses=link.uses,
        created_at=as_utc(link.created_at),
        expires_at=as_utc(link.expires_at),
        revoked_at=as_utc(link.revoked_at) if link.revoked_at else None,
    )
