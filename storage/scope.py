"""Which studies a caller may see: site scoping, applied inside the SQL of every read.

A study belongs to the site that sent it (:attr:`Study.source_site`: the sending
node's site, the importer's ``--site``, the STOW user's site) and to every site or
user it was forwarded or shared to (:class:`StudyAccess` rows). A :class:`Scope`
says what a caller sees:

- everything (an administrator, or the archive itself);
- a radiologist: the studies of its sites, and those forwarded or shared to its
  sites or to itself;
- a referring doctor: the studies shared with it, and those whose
  ReferringPhysicianName folds to the name it is mapped to;
- nothing (a modality account, which may only store).

:func:`visible_studies` is a condition on :class:`Study` that queries add to their
own ``WHERE``, so a list is filtered by the database before anything is fetched and
a page of 50 is 50 visible studies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    ColumnElement,
    String,
    and_,
    bindparam,
    delete,
    exists,
    false,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import SelectBase
from sqlalchemy.sql.visitors import InternalTraversal

from storage.models import Report, ShareLink, Study, StudyAccess, User, UserSite


class Sees(StrEnum):
    EVERYTHING = "everything"
    SITES = "sites"  # its sites' studies, and those forwarded or shared to it
    SHARED = "shared"  # only studies shared with it or referred by it
    NOTHING = "nothing"


@dataclass(frozen=True)
class Scope:
    """What one caller may see."""

    sees: Sees
    user_id: int | None = None
    sites: frozenset[str] = field(default_factory=frozenset)
    referring_name_key: str = ""

    @property
    def everything(self) -> bool:
        return self.sees is Sees.EVERYTHING


EVERYTHING = Scope(Sees.EVERYTHING)


class Reason(StrEnum):
    FORWARDED = "forwarded"
    SHARED = "shared"


@lru_cache(maxsize=1024)
def visible_studies(scope: Scope, *, named: bool = False) -> ColumnElement[bool]:
    """A condition on :class:`Study`: true for the studies ``scope`` may see.

    ``named``: the query names its studies (a StudyInstanceUID match, such as the
    series of one study), so each named study's own grants are looked up. A list
    instead tests every study it passes against all the caller's grants, read once.

    Built once per scope: the expression is immutable, and building it (and SQL
    "expanding" IN lists, re-rendered on every execution) cost a quick query as
    much as running it.
    """
    if scope.sees is Sees.EVERYTHING:
        return true()
    if scope.sees is Sees.NOTHING:
        return false()
    own: list[ColumnElement[bool]] = []
    granted: list[ColumnElement[bool]] = []  # conditions on StudyAccess
    if scope.user_id is not None:
        granted.append(StudyAccess.user_pk == scope.user_id)
    if scope.sees is Sees.SITES and scope.sites:
        sites = _each(scope.sites)
        # A grant to one user has site "", the name of this archive's own site too.
        granted.append(and_(StudyAccess.site.in_(sites), StudyAccess.user_pk.is_(None)))
        own.append(Study.source_site.in_(sites))
    elif scope.sees is Sees.SHARED and scope.referring_name_key:
        own.append(Study.referring_physician_name_key == scope.referring_name_key)
    if not granted:
        return or_(false(), *own)
    if named:
        # The grants of the study at hand, through ix_study_access_study_pk: a few
        # rows, where listing the caller's grants reads hundreds for a central
        # hospital's radiologist (bench/authz_qido.py, "series of a study").
        return or_(*own, exists().where(StudyAccess.study_pk == Study.id, or_(*granted)))
    # One SELECT per kind of grant, each answered from its own index: an OR of the
    # two in one WHERE would read every row of study_access on every query.
    selects = [select(StudyAccess.study_pk).where(condition) for condition in granted]
    ids = selects[0] if len(selects) == 1 else union_all(*selects)
    return or_(*own, _AmongIds(Study.id, ids))


def _each(values: frozenset[str]) -> list[BindParameter[str]]:
    """One bound parameter per value: a plain ``IN (?, ?)`` whose SQL is cached, not
    an expanding list rewritten at each execution."""
    return [bindparam(None, value, type_=String()) for value in sorted(values)]


class _AmongIds(ColumnElement[bool]):
    """``column`` is one of the ids ``ids`` selects, written so that every term of
    the OR in :func:`visible_studies` can use an index.

    Then the planner can choose: for a caller who sees few studies, read just those
    (through ``ix_studies_source_site`` and the granted ids) and sort them; for one
    who sees many, walk the date index and stop when the page is full. A correlated
    ``EXISTS`` (or, on PostgreSQL, ``IN (subquery)``) cannot use an index, so a
    caller seeing 2 % of the studies walked the whole date index for every page:
    6-30x slower than an administrator in the SQL (bench/authz_qido.py). SQLite turns
    ``IN (subquery)`` into a list it can search by rowid (a multi-index OR);
    PostgreSQL needs ``= ANY(ARRAY(subquery))`` for an index condition (a BitmapOr).
    """

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate already: no "= 1" on SQLite
    _traverse_internals: ClassVar[list[tuple[str, InternalTraversal]]] = [
        ("column", InternalTraversal.dp_clauseelement),
        ("ids", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[int], ids: SelectBase) -> None:
        self.column = column
        self.ids = ids


@compiles(_AmongIds)
def _among_ids(element: _AmongIds, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} IN {compiler.process(element.ids.scalar_subquery(), **kw)}"


@compiles(_AmongIds, "postgresql")
def _among_ids_postgresql(element: _AmongIds, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} = ANY(ARRAY{compiler.process(element.ids.scalar_subquery(), **kw)})"


def study_of_report(session: Session, report_id: int) -> str | None:
    """The StudyInstanceUID a report is about, or ``None``."""
    return session.scalar(
        select(Study.study_instance_uid)
        .join(Report, Report.study_pk == Study.id)
        .where(Report.id == report_id)
    )


def study_of_link(session: Session, link_id: int) -> str | None:
    """The StudyInstanceUID a share link opens, or ``None``."""
    return session.scalar(
        select(Study.study_instance_uid)
        .join(ShareLink, ShareLink.study_pk == Study.id)
        .where(ShareLink.id == link_id)
    )


def study_visibility(session: Session, scope: Scope, study_uid: str) -> bool | None:
    """``None`` if no such study, else whether ``scope`` sees it."""
    row = session.execute(
        select(visible_studies(scope, named=True)).where(Study.study_instance_uid == study_uid)
    ).first()
    return None if row is None else bool(row[0])


@dataclass(frozen=True)
class Grant:
    """One study made visible to a site or a user."""

    id: int
    study_instance_uid: str
    site: str
    username: str
    reason: str
    created_at: datetime


class GrantError(ValueError):
    pass


class NoSuchStudy(GrantError):
    pass


def grant(
    session: Session,
    study_uid: str,
    reason: Reason,
    *,
    site: str = "",
    username: str = "",
) -> Grant:
    """Make ``study_uid`` visible to ``site`` or to the user ``username`` (idempotent)."""
    if bool(site) == bool(username):
        raise GrantError("give a site or a user, not both")
    if len(site) > 64 or not site.isprintable():
        raise GrantError("a site name is at most 64 printable characters")
    study_pk = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
    if study_pk is None:
        raise NoSuchStudy(f"no study {study_uid!r}")
    user_pk = None
    if username:
        user_pk = session.scalar(select(User.id).where(User.username == username))
        if user_pk is None:
            raise GrantError(f"no user {username!r}")
    row = session.scalar(
        select(StudyAccess).where(
            StudyAccess.study_pk == study_pk,
            StudyAccess.site == site,
            StudyAccess.user_pk.is_(None) if user_pk is None else StudyAccess.user_pk == user_pk,
        )
    )
    if row is None:
        row = StudyAccess(
            study_pk=study_pk,
            site=site,
            user_pk=user_pk,
            reason=Reason(reason).value,
            created_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()
    return Grant(row.id, study_uid, site, username, row.reason, row.created_at)


def grants(session: Session, study_uid: str) -> list[Grant]:
    """Who a study was forwarded or shared to, oldest first."""
    rows = session.execute(
        select(StudyAccess, User.username)
        .join(Study, StudyAccess.study_pk == Study.id)
        .outerjoin(User, StudyAccess.user_pk == User.id)
        .where(Study.study_instance_uid == study_uid)
        .order_by(StudyAccess.id)
    )
    return [Grant(a.id, study_uid, a.site, name or "", a.reason, a.created_at) for a, name in rows]


def revoke(session: Session, study_uid: str, grant_id: int) -> bool:
    """Withdraw one grant of ``study_uid``; ``False`` if there is no such grant."""
    study_pk = select(Study.id).where(Study.study_instance_uid == study_uid).scalar_subquery()
    result = session.execute(
        delete(StudyAccess).where(StudyAccess.id == grant_id, StudyAccess.study_pk == study_pk)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_user_sites(user: User, sites: Iterable[str]) -> None:
    """Replace the sites ``user`` works for."""
    wanted = sorted({s.strip() for s in sites})
    for site in wanted:
        if len(site) > 64 or not site.isprintable():
            raise GrantError("a site name is at most 64 printable characters")
    user.sites = [UserSite(site=site) for site in wanted]
