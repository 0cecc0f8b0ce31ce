"""Who may call what: every route of the OpenAPI schema against a table of roles.

Each route is called without credentials, as each role, and as a radiologist of
another site. The table says which roles may use a route and whether the route
reaches into the home study (its path names it, or a report or link of it), in
which case the other site's radiologist gets 404, as if it did not exist.

GET routes are called with real identifiers and must answer 200 to an allowed
role. Routes that change something are probed without side effects: a body that
fails validation, or an identifier that does not exist (behind a real study
where the path names one), so an allowed role gets a 4xx other than 401/403 and a
refused one gets 401/403/404 before the route runs. A route missing from the table
fails the test: a new route must say who may call it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from storage.ingest import Source
from storage.jobs import enqueue
from storage.nodes import Node, add_node
from storage.query import Level, Query, search
from storage.reports import ReportContent, create_draft
from storage.scope import Reason, grant
from storage.share_links import create_link
from storage.users import Role, create_user
from tests.conftest import SAMPLES, migrated_archive

HOME, OTHER = "BV Đa khoa Hà Giang", "BV Cao Bằng"
PASSWORD = "password-123"
ADMIN, RAD, REF, MOD = Role.ADMIN, Role.RADIOLOGIST, Role.REFERRING, Role.MODALITY
READERS = {ADMIN, RAD, REF}
WRITERS = {ADMIN, RAD}
ANYONE = {ADMIN, RAD, REF, MOD}
PUBLIC = "public"  # no user needed
SHARE = "share"  # the share token in the path is the credential
INSTANCE = "/dicomweb/studies/{study}/series/{series}/instances/{instance}"


@dataclass(frozen=True)
class Rule:
    allowed: set[Role] | str
    home_study: bool = False  # reaches into the home study: 404 for the other site
    query: str = ""  # query string for GET routes
    answer: int = 200  # what an allowed GET gets


TABLE: dict[str, Rule] = {
    "GET /healthz": Rule(PUBLIC),
    "GET /metrics": Rule(ANYONE),
    "POST /api/auth/token": Rule(PUBLIC),
    "POST /api/auth/refresh": Rule(PUBLIC),  # the refresh token in the body is the credential
    "POST /api/auth/logout": Rule(PUBLIC),
    "GET /api/auth/oidc": Rule(PUBLIC),  # whether OpenID Connect sign-in is offered
    "GET /api/auth/oidc/login": Rule(PUBLIC, answer=404),  # not set up here: tests/test_oidc.py
    "GET /api/auth/oidc/callback": Rule(PUBLIC, answer=404),
    "GET /api/me": Rule(ANYONE),
    "POST /api/me/password": Rule(ANYONE),
    "GET /api/users": Rule({ADMIN}),
    "POST /api/users": Rule({ADMIN}),
    "POST /api/users/{username}/disable": Rule({ADMIN}),
    "POST /api/users/{username}/enable": Rule({ADMIN}),
    "PUT /api/users/{username}/password": Rule({ADMIN}),
    "GET /api/audit": Rule({ADMIN}),
    "GET /api/audit/export": Rule({ADMIN}),
    # DICOMweb: QIDO across studies is filtered, not refused
    "GET /dicomweb/studies": Rule(READERS),
    "GET /dicomweb/series": Rule(READERS),
    "GET /dicomweb/instances": Rule(READERS),
    "GET /dicomweb/studies/{study}/series": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/instances": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/series/{series}/instances": Rule(READERS, True),
    "GET /dicomweb/studies/{study}": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/metadata": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/series/{series}": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/series/{series}/metadata": Rule(READERS, True),
    f"GET {INSTANCE}": Rule(READERS, True),
    f"GET {INSTANCE}/metadata": Rule(READERS, True),
    f"GET {INSTANCE}/frames/{{frames}}": Rule(READERS, True),
    f"GET {INSTANCE}/bulkdata/{{tags}}": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/rendered": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/thumbnail": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/series/{series}/rendered": Rule(READERS, True),
    "GET /dicomweb/studies/{study}/series/{series}/thumbnail": Rule(READERS, True),
    f"GET {INSTANCE}/rendered": Rule(READERS, True),
    f"GET {INSTANCE}/thumbnail": Rule(READERS, True),
    f"GET {INSTANCE}/frames/{{frames}}/rendered": Rule(READERS, True),
    f"GET {INSTANCE}/frames/{{frames}}/thumbnail": Rule(READERS, True),
    "POST /dicomweb/studies": Rule({ADMIN, RAD, MOD}),
    "POST /dicomweb/studies/{study}": Rule({ADMIN, RAD, MOD}, True),
    "GET /wado": Rule(
        READERS,
        True,
        "requestType=WADO&studyUID={study}&seriesUID={series}"
        "&objectUID={instance}&contentType=image/jpeg",
    ),
    # the archive's own business
    "GET /api/worklist": Rule(READERS),
    "GET /api/studies/{study}/download": Rule(READERS, True),
    "GET /api/studies/{study}/series/{series}/download": Rule(READERS, True),
    "GET /api/nodes": Rule({ADMIN}),
    "POST /api/nodes": Rule({ADMIN}),
    "DELETE /api/nodes/{name}": Rule({ADMIN}),
    "GET /api/routes": Rule({ADMIN}),
    "POST /api/routes": Rule({ADMIN}),
    "DELETE /api/routes/{name}": Rule({ADMIN}),
    "GET /api/jobs": Rule({ADMIN}),
    "POST /api/jobs": Rule({ADMIN}),
    "GET /api/jobs/{job_id}": Rule({ADMIN}),
    "POST /api/jobs/{job_id}/retry": Rule({ADMIN}),
    # reports
    "GET /api/report-templates": Rule(READERS),
    "POST /api/studies/{study}/reports": Rule(WRITERS, True),
    "GET /api/studies/{study}/reports": Rule(READERS, True),
    "GET /api/patients/{patient_id}/reports": Rule(READERS, query="issuer={issuer}"),
    "GET /api/reports/{report_id}": Rule(READERS, True),
    "PATCH /api/reports/{report_id}": Rule(WRITERS, True),
    "POST /api/reports/{report_id}/finalize": Rule(WRITERS, True),
    "POST /api/reports/{report_id}/amend": Rule(WRITERS, True),
    "GET /api/reports/{report_id}/pdf": Rule(READERS, True),
    "GET /api/reports/{report_id}/key-images/{number}": Rule(READERS, True),
    # sharing
    "POST /api/studies/{study}/share-links": Rule(WRITERS, True),
    "GET /api/studies/{study}/share-links": Rule(WRITERS, True),
    "DELETE /api/share-links/{link_id}": Rule(WRITERS, True),
    "GET /api/share/{token}": Rule(SHARE),
    "GET /api/share/{token}/instances/{instance}/rendered": Rule(SHARE),
    "GET /api/share/{token}/reports/{report_id}/pdf": Rule(SHARE),
    "GET /api/share/{token}/download": Rule(SHARE),
    "GET /api/studies/{study}/access": Rule(WRITERS, True),
    "POST /api/studies/{study}/access": Rule(WRITERS, True),
    "DELETE /api/studies/{study}/access/{grant_id}": Rule(WRITERS, True),
}


@dataclass
class World:
    client: TestClient
    ids: dict[str, str]  # path parameter -> real value in (or of) the home study


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("authz")
    archive = migrated_archive(f"sqlite:///{folder / 'index.sqlite'}", folder)
    for path in sorted((SAMPLES / "ct_chest").rglob("*.dcm")):
        assert archive.ingest(path, Source(ae_title="CT_HG", site=HOME)).ok
    for path in sorted((SAMPLES / "mr_brain").rglob("*.dcm")):
        assert archive.ingest(path, Source(ae_title="MR_CB", site=OTHER)).ok
    with archive.sessions() as session:
        query = Query(Level.IMAGE, match={"PatientID": "BN0001"}, include={"IssuerOfPatientID"})
        home = next(search(session, query))
        for role in Role:
            create_user(session, role.value, PASSWORD, role, sites=[HOME])
        create_user(session, "other-site", PASSWORD, RAD, sites=[OTHER])
        grant(session, home["StudyInstanceUID"], Reason.SHARED, username=REF.value)
        content = ReportContent(findings="x", key_images=(home["SOPInstanceUID"],))
        report = create_draft(session, home["StudyInstanceUID"], content, "x")
        token, link = create_link(session, home["StudyInstanceUID"], "x", timedelta(hours=1))
        add_node(session, Node(name="far", ae_title="FAR", host="192.0.2.1", port=104))
        job = enqueue(session, home["StudyInstanceUID"], "far")
        shared = grant(session, home["StudyInstanceUID"], Reason.SHARED, site="BV Lào Cai")
        session.commit()
    ids = {
        "study": home["StudyInstanceUID"],
        "series": home["SeriesInstanceUID"],
        "instance": home["SOPInstanceUID"],
        "frames": "1",
        "tags": "7FE00010",
        "patient_id": "BN0001",
        "issuer": home.get("IssuerOfPatientID") or HOME,
        "report_id": str(report.id),
        "number": "1",
        "link_id": str(link.id),
        "token": token,
        "name": "far",
        "job_id": str(job.id),
        "grant_id": str(shared.id),
        "username": "no-such-user",  # users' routes are probed only
    }
    with TestClient(create_app(archive)) as client:
        signed = client.post(f"/api/reports/{report.id}/finalize", auth=(ADMIN.value, PASSWORD))
        assert signed.status_code == 200, signed.text  # referring doctors read final reports
        yield World(client, ids)
    archive.sessions.kw["bind"].dispose()


def routes(client: TestClient) -> list[str]:
    schema = client.get("/openapi.json").json()
    return sorted(f"{m.upper()} {path}" for path, ops in schema["paths"].items() for m in ops)


def test_every_route_is_in_the_table(world: World) -> None:
    listed = routes(world.client)
    assert sorted(set(listed) - set(TABLE)) == [], "routes nobody said who may call"
    assert sorted(set(TABLE) - set(listed)) == [], "table rows for routes that are gone"


def call(world: World, route: str, user: str | None, *, probe: bool) -> httpx.Response:
    """Call ``route`` as ``user``; with ``probe``, identifiers that do not exist."""
    method, template = route.split(" ", 1)
    rule = TABLE[route]
    ids = dict(world.ids)
    if probe and user != "other-site":  # behind the real study, nothing to act on
        ids |= {k: "999999" for k in ("report_id", "link_id", "job_id", "grant_id")}
        ids |= {"name": "no-such-thing", "token": "no-such-token"}
    path = template.format(**ids)
    query = rule.query.format(**ids)
    auth = (user, PASSWORD) if user else None
    if method == "GET":
        return world.client.get(path, params=httpx.QueryParams(query), auth=auth)
    return world.client.request(method, path, json={"probe": [1]}, auth=auth)


CALLERS = [None, *(r.value for r in Role), "other-site"]


@pytest.mark.parametrize("route", sorted(TABLE))
def test_who_may_call_what(world: World, route: str) -> None:
    rule = TABLE[route]
    probe = not route.startswith("GET ")
    for user in CALLERS:
        got = call(world, route, user, probe=probe).status_code
        assert got < 500, (route, user, got)
        role = None if user is None else (RAD if user == "other-site" else Role(user))
        if rule.allowed in (PUBLIC, SHARE):
            expected = {rule.answer} if not probe else None
        elif role is None:
            expected = {401}
        elif role not in rule.allowed:
            expected = {403}
        elif user == "other-site" and rule.home_study:
            expected = {404}
        else:
            expected = {rule.answer} if not probe else None
        if expected is None:  # an allowed probe: refused for its content, not its caller
            assert got not in (401, 403), (route, user, got)
            if rule.home_study and user != "other-site" and not probe:
                assert got != 404, (route, user, got)
        else:
            assert got in expected, (route, user, got)


def test_the_other_site_finds_nothing_of_the_home_study(world: World) -> None:
    auth = ("other-site", PASSWORD)
    studies = world.client.get("/dicomweb/studies", auth=auth).json()
    uids = {s["0020000D"]["Value"][0] for s in studies}
    assert world.ids["study"] not in uids and len(uids) == 1  # its own MR study only
    assert (
        world.client.get("/dicomweb/instances", auth=auth, params={"PatientID": "BN0001"}).json()
        == []
    )
    rows = world.client.get("/api/worklist", auth=auth).json()["items"]
    assert [r["study_instance_uid"] for r in rows] != [] and world.ids["study"] not in {
        r["study_instance_uid"] for r in rows
    }
    got = world.client.get(
        "/api/patients/BN0001/reports", auth=auth, params={"issuer": world.ids["issuer"]}
    )
    assert got.status_code == 200 and got.json() == []


def test_sharing_with_another_site_over_http_and_withdrawing_it(world: World) -> None:
    study, other = world.ids["study"], ("other-site", PASSWORD)
    series = f"/dicomweb/studies/{study}/series"
    assert world.client.get(series, auth=other).status_code == 404
    given = world.client.post(
        f"/api/studies/{study}/access", json={"site": OTHER}, auth=(RAD.value, PASSWORD)
    )
    assert given.status_code == 201, given.text
    assert given.json()["site"] == OTHER and given.json()["reason"] == "shared"
    assert world.client.get(series, auth=other).status_code == 200
    assert world.client.get(f"/api/studies/{study}/download", auth=other).status_code == 200
    listed = world.client.get(f"/api/studies/{study}/access", auth=other).json()
    assert OTHER in {g["site"] for g in listed}
    gone = world.client.delete(
        f"/api/studies/{study}/access/{given.json()['id']}", auth=(ADMIN.value, PASSWORD)
    )
    assert gone.status_code == 204
    assert world.client.get(series, auth=other).status_code == 404
    assert world.client.get(f"/api/studies/{study}/download", auth=other).status_code == 404


def stow_body(path: Path, boundary: str = "authz-boundary") -> tuple[bytes, dict[str, str]]:
    part = path.read_bytes()
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, {"Content-Type": content_type, "Accept": "application/dicom+json"}


def test_a_modality_stores_into_its_own_sites_studies_only(world: World) -> None:
    modality = (MOD.value, PASSWORD)
    body, headers = stow_body(next((SAMPLES / "mr_brain").rglob("*.dcm")))  # the other site's
    refused = world.client.post("/dicomweb/studies", content=body, headers=headers, auth=modality)
    assert refused.status_code == 409, refused.text
    failed = refused.json()["00081198"]["Value"][0]  # FailedSOPSequence
    assert failed["00081197"]["Value"] == [0x0124]  # FailureReason: Refused: Not Authorized
    body, headers = stow_body(next((SAMPLES / "ct_chest").rglob("*.dcm")))  # its own site's
    stored = world.client.post("/dicomweb/studies", content=body, headers=headers, auth=modality)
    assert stored.status_code == 200, stored.text
