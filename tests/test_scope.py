"""Site scoping in the SQL itself (storage/scope.py), on SQLite and PostgreSQL.

Four sample studies from three sites; users of each role and site; the same
queries the HTTP routes run (QIDO at every level, the worklist, report lookups,
share-link revocation) must return exactly what each caller may see.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from storage import Archive
from storage.jobs import enqueue, finish
from storage.nodes import Node, add_node
from storage.query import Level, Query, search
from storage.reports import ReportContent, ReportNotFound, create_draft, get_report
from storage.scope import (
    EVERYTHING,
    GrantError,
    NoSuchStudy,
    Reason,
    Scope,
    Sees,
    grant,
    grants,
    revoke,
    study_visibility,
)
from storage.share_links import LinkUnknown, create_link, revoke_link
from storage.users import Role, create_user, get_user
from storage.worklist import WorklistFilter, worklist
from tests.conftest import sites_archive

HA_GIANG, CAO_BANG = "BV Đa khoa Hà Giang", "BV Cao Bằng"
SITES = {"ct_chest": HA_GIANG, "mr_brain": CAO_BANG}  # the rest: this archive's own ("")
CT, LATIN1, MR, XA = "ct_chest", "ct_latin1", "mr_brain", "xa_coronary"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    arch = sites_archive(request, tmp_path_factory.mktemp("scope"), SITES)
    with arch.sessions() as session:
        create_user(session, "rad-hg", "password1", Role.RADIOLOGIST, sites=[HA_GIANG])
        create_user(session, "rad-two", "password1", Role.RADIOLOGIST, sites=[HA_GIANG, CAO_BANG])
        create_user(session, "rad-local", "password1", Role.RADIOLOGIST)
        create_user(session, "dr-mai", "password1", Role.REFERRING, referring_name="le^thi mai")
        create_user(session, "dr-none", "password1", Role.REFERRING)
        session.commit()
    yield arch
    arch.sessions.kw["bind"].dispose()


@pytest.fixture(scope="module")
def studies(archive: Archive) -> dict[str, str]:
    """Sample folder -> StudyInstanceUID."""
    found: dict[str, str] = {}
    with archive.sessions() as session:
        for row in search(session, Query(Level.STUDY, include={"ReferringPhysicianName"})):
            name = str(row["ReferringPhysicianName"] or "")
            found[_FOLDER_OF_REFERRER[name]] = row["StudyInstanceUID"]
    return found


_FOLDER_OF_REFERRER = {
    "Lê^Thị Mai": CT,
    "Le^Thi Mai": LATIN1,
    "Phạm^Quốc Huy": MR,
    "Hoàng^Văn Sơn": XA,
}


def scope_of(archive: Archive, username: str) -> Scope:
    """What api.auth.Principal.scope builds for this user."""
    with archive.sessions() as session:
        user = get_user(session, username)
        assert user is not None
        sees = {"radiologist": Sees.SITES, "referring": Sees.SHARED}[user.role]
        return Scope(sees, user.id, frozenset(s.site for s in user.sites), user.referring_name_key)


def visible(archive: Archive, scope: Scope, level: Level = Level.STUDY) -> set[str]:
    """The studies ``scope`` finds at ``level``: in a list, and asked one by one (a
    query naming its study checks that study's grants: storage.scope, ``named``)."""
    with archive.sessions() as session:
        listed = {r["StudyInstanceUID"] for r in search(session, Query(level, scope=scope))}
        every = [r["StudyInstanceUID"] for r in search(session, Query(Level.STUDY))]
        named = {
            uid
            for uid in every
            if any(search(session, Query(level, {"StudyInstanceUID": uid}, scope=scope)))
        }
        assert named == listed
        assert {u for u in every if study_visibility(session, scope, u)} == listed
        return listed


def folders(studies: dict[str, str], uids: set[str]) -> set[str]:
    return {folder for folder, uid in studies.items() if uid in uids}


@pytest.mark.parametrize("level", [Level.STUDY, Level.SERIES, Level.IMAGE])
def test_each_radiologist_sees_the_studies_of_its_sites(
    archive: Archive, studies: dict[str, str], level: Level
) -> None:
    def sees(user: str) -> set[str]:
        return folders(studies, visible(archive, scope_of(archive, user), level))

    assert sees("rad-hg") == {CT}
    assert sees("rad-two") == {CT, MR}
    assert sees("rad-local") == {LATIN1, XA}
    assert folders(studies, visible(archive, EVERYTHING, level)) == {CT, LATIN1, MR, XA}
    assert visible(archive, Scope(Sees.NOTHING), level) == set()


def test_patients_are_visible_through_their_studies(
    archive: Archive, studies: dict[str, str]
) -> None:
    with archive.sessions() as session:
        rows = search(session, Query(Level.PATIENT, scope=scope_of(archive, "rad-hg")))
        assert [r["PatientID"] for r in rows] == ["BN0001"]


def test_a_referring_doctor_sees_studies_it_referred_folded_or_was_given(
    archive: Archive, studies: dict[str, str]
) -> None:
    # "le^thi mai" folds like both "Lê^Thị Mai" and "Le^Thi Mai"
    assert folders(studies, visible(archive, scope_of(archive, "dr-mai"))) == {CT, LATIN1}
    assert visible(archive, scope_of(archive, "dr-none")) == set()
    with archive.sessions() as session:
        given = grant(session, studies[XA], Reason.SHARED, username="dr-none")
        session.commit()
    try:
        assert folders(studies, visible(archive, scope_of(archive, "dr-none"))) == {XA}
        assert visible(archive, scope_of(archive, "rad-hg")) == {studies[CT]}  # user grant only
    finally:
        with archive.sessions() as session:
            assert revoke(session, studies[XA], given.id)
            session.commit()
    assert visible(archive, scope_of(archive, "dr-none")) == set()


def test_a_study_shared_with_one_user_is_not_seen_by_the_local_site(
    archive: Archive, studies: dict[str, str]
) -> None:
    # A user grant's row has site "", the name of this archive's own site: it must
    # not count as a grant to that site.
    with archive.sessions() as session:
        given = grant(session, studies[CT], Reason.SHARED, username="dr-none")
        session.commit()
    try:
        assert folders(studies, visible(archive, scope_of(archive, "rad-local"))) == {LATIN1, XA}
        with archive.sessions() as session:
            local = scope_of(archive, "rad-local")
            assert study_visibility(session, local, studies[CT]) is False
    finally:
        with archive.sessions() as session:
            assert revoke(session, studies[CT], given.id)
            session.commit()


def test_a_study_shared_to_a_site_is_seen_there_until_revoked(
    archive: Archive, studies: dict[str, str]
) -> None:
    rad_cb = Scope(Sees.SITES, None, frozenset({CAO_BANG}))
    with archive.sessions() as session:
        given = grant(session, studies[CT], Reason.SHARED, site=CAO_BANG)
        again = grant(session, studies[CT], Reason.SHARED, site=CAO_BANG)  # idempotent
        session.commit()
        assert given.id == again.id
        assert [(g.site, g.reason) for g in grants(session, studies[CT])] == [(CAO_BANG, "shared")]
        assert study_visibility(session, rad_cb, studies[CT]) is True
    assert folders(studies, visible(archive, rad_cb)) == {CT, MR}
    with archive.sessions() as session:
        assert revoke(session, studies[CT], given.id)
        assert not revoke(session, studies[MR], given.id)  # a grant of another study
        session.commit()
        assert study_visibility(session, rad_cb, studies[CT]) is False
        assert study_visibility(session, rad_cb, "1.2.3.4.5") is None  # no such study


def test_grants_refuse_nonsense(archive: Archive, studies: dict[str, str]) -> None:
    with archive.sessions() as session:
        with pytest.raises(NoSuchStudy):
            grant(session, "1.2.3.999", Reason.SHARED, site=HA_GIANG)
        with pytest.raises(GrantError):
            grant(session, studies[CT], Reason.SHARED, site=HA_GIANG, username="dr-none")
        with pytest.raises(GrantError):
            grant(session, studies[CT], Reason.SHARED)
        with pytest.raises(GrantError):
            grant(session, studies[CT], Reason.SHARED, username="nobody")
        with pytest.raises(GrantError):
            grant(session, studies[CT], Reason.SHARED, site="x" * 65)


def test_a_finished_forward_shares_the_study_with_the_destination_site(
    archive: Archive, studies: dict[str, str]
) -> None:
    rad_lc = Scope(Sees.SITES, None, frozenset({"BV Lào Cai"}))
    with archive.sessions() as session:
        add_node(
            session,
            Node(name="laocai", ae_title="LAOCAI", host="10.0.0.9", port=104, site="BV Lào Cai"),
        )
        job = enqueue(session, studies[MR], "laocai")
        session.commit()
        assert study_visibility(session, rad_lc, studies[MR]) is False
        finish(session, job.id, {})
        assert study_visibility(session, rad_lc, studies[MR]) is True
        assert [g.reason for g in grants(session, studies[MR])] == ["forwarded"]


def test_the_worklist_lists_only_visible_studies(archive: Archive, studies: dict[str, str]) -> None:
    with archive.sessions() as session:
        rows, more = worklist(session, WorklistFilter(), 50, 0, scope_of(archive, "rad-hg"))
        assert [r.study_instance_uid for r in rows] == [studies[CT]] and not more
        rows, _ = worklist(session, WorklistFilter(site="Cao"), 50, 0, scope_of(archive, "rad-hg"))
        assert rows == []


def test_reports_and_share_links_of_hidden_studies_are_not_found(
    archive: Archive, studies: dict[str, str]
) -> None:
    with archive.sessions() as session:
        report = create_draft(session, studies[MR], ReportContent(findings="ok"), "rad-two")
        _, link = create_link(session, studies[MR], "rad-two", timedelta(hours=1), "")
        session.commit()
        assert get_report(session, report.id, scope_of(archive, "rad-two")).id == report.id
        with pytest.raises(ReportNotFound):
            get_report(session, report.id, scope_of(archive, "rad-hg"))
        with pytest.raises(LinkUnknown):
            revoke_link(session, link.id, scope_of(archive, "rad-hg"))
        assert revoke_link(session, link.id, scope_of(archive, "rad-two")).revoked_at <= (
            datetime.now(UTC) + timedelta(seconds=1)
        )
