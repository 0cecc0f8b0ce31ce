"""The audit trail (issue 8): ATNA columns, /api/audit and its export, refusals audited.

Runs on SQLite and on the real PostgreSQL (the ``archive`` fixture), through the
real application in-process.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import func, select

from api.app import create_app
from storage import Archive, Source
from storage.models import AuditEvent
from storage.users import Role, create_user
from tests.conftest import ROOT, SAMPLES

ADMIN = ("admin", "admin-password")
DOCTOR = ("doctor", "doctor-password")
SITE = "BV-HUE"


@pytest.fixture
def ct(archive: Archive) -> dict[str, str]:
    """The CT sample, sent by site BV-HUE: its UIDs and PatientID."""
    paths = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))
    for path in paths:
        assert archive.ingest(path, Source(site=SITE)).ok
    first = dcmread(paths[0], stop_before_pixels=True)
    return {
        "study": first.StudyInstanceUID,
        "series": first.SeriesInstanceUID,
        "instance": first.SOPInstanceUID,
        "patient_id": first.PatientID,
    }


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST, sites=[SITE])
        create_user(session, "elsewhere", "elsewhere-password", Role.RADIOLOGIST, sites=["QN"])
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def rows(client: TestClient, archive: Archive, *where: Any) -> list[AuditEvent]:
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(*where).order_by(AuditEvent.id)))


def audit(http: TestClient, **params: Any) -> list[dict[str, Any]]:
    http.app.state.audit.flush()  # type: ignore[attr-defined]
    response = http.get("/api/audit", params=params, auth=ADMIN)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_a_wado_read_by_a_radiologist_fills_every_column(
    client: TestClient, archive: Archive, ct: dict[str, str]
) -> None:
    url = f"/dicomweb/studies/{ct['study']}/series/{ct['series']}/instances/{ct['instance']}"
    assert client.get(url, auth=DOCTOR).status_code == 200
    [event] = rows(client, archive, AuditEvent.path == url)
    assert (event.username, event.role, event.site, event.client) == (
        "doctor",
        "radiologist",
        SITE,
        "testclient",
    )
    assert (event.action, event.event_type, event.outcome, event.status) == (
        "retrieve",
        "DICOM Instances Transferred",
        0,
        200,
    )
    assert (event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid) == (
        ct["study"],
        ct["series"],
        ct["instance"],
    )
    assert event.patient_id == ct["patient_id"]
    assert abs(datetime.now(UTC) - event.at.replace(tzinfo=UTC)) < timedelta(minutes=1)
    empty = [c.name for c in AuditEvent.__table__.columns if getattr(event, c.name) in ("", None)]
    assert empty == []


def test_an_admin_without_a_site_gets_the_site_of_the_study(
    client: TestClient, archive: Archive, ct: dict[str, str]
) -> None:
    assert client.get(f"/dicomweb/studies/{ct['study']}/metadata", auth=ADMIN).status_code == 200
    [event] = rows(client, archive, AuditEvent.username == "admin")
    assert (event.site, event.patient_id, event.role) == (SITE, ct["patient_id"], "admin")


def test_filters_and_paging(client: TestClient, archive: Archive, ct: dict[str, str]) -> None:
    assert client.get("/dicomweb/studies", auth=DOCTOR).status_code == 200
    rendered = f"/dicomweb/studies/{ct['study']}/series/{ct['series']}/rendered"
    assert client.get(rendered, auth=DOCTOR).status_code == 200
    assert client.get("/dicomweb/studies", auth=("doctor", "wrong-password")).status_code == 401
    assert client.get("/api/users", auth=DOCTOR).status_code == 403
    before = datetime.now(UTC)

    everything = audit(client)
    assert [e["action"] for e in everything] == ["denied", "sign-in", "render", "search"]
    assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)
    assert {e["action"] for e in audit(client, user="doctor")} == {
        "denied",
        "sign-in",
        "render",
        "search",
    }
    assert [e["action"] for e in audit(client, event_type="Query")] == ["search"]
    assert [e["action"] for e in audit(client, action="render")] == ["render"]
    assert [e["action"] for e in audit(client, outcome=4)] == ["denied", "sign-in"]
    assert [e["action"] for e in audit(client, study=ct["study"])] == ["render"]
    assert [e["action"] for e in audit(client, patient_id=ct["patient_id"])] == ["render"]
    assert len(audit(client, role="radiologist")) == 3  # the failed sign-in has no role
    assert len(audit(client, site=SITE)) == 3
    assert audit(client, site="BV") == []  # a whole site name, not a prefix
    assert len(audit(client, client="testclient")) >= 4
    assert audit(client, client="10.0.0.1") == []
    assert audit(client, user="doctor", **{"from": before.isoformat()}) == []
    assert len(audit(client, user="doctor", to=before.isoformat())) == 4
    # Earlier reads of the trail are in it too, as "Audit Log Used".
    assert {e["username"] for e in audit(client, event_type="Audit Log Used")} == {"admin"}

    first = client.get("/api/audit", params={"user": "doctor", "limit": 3}, auth=ADMIN).json()
    assert len(first["events"]) == 3
    cursor = first["next_before"]
    rest = client.get(
        "/api/audit", params={"user": "doctor", "limit": 3, "before": cursor}, auth=ADMIN
    ).json()
    assert [e["action"] for e in rest["events"]] == ["search"]
    assert rest["next_before"] is None


def test_bad_filters_are_422(client: TestClient) -> None:
    for params in (
        {"outcome": "x"},
        {"outcome": 13},
        {"from": "yesterday"},
        {"role": "superuser"},
        {"limit": 0},
        {"limit": 100_000},
        {"user": "x" * 65},
        {"before": -1},
    ):
        assert client.get("/api/audit", params=params, auth=ADMIN).status_code == 422, params


def test_export_is_json_lines_and_is_audited(
    client: TestClient, archive: Archive, ct: dict[str, str]
) -> None:
    for _ in range(3):
        assert client.get(f"/dicomweb/studies/{ct['study']}/series", auth=DOCTOR).status_code == 200
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    response = client.get("/api/audit/export", params={"user": "doctor"}, auth=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "attachment" in response.headers["content-disposition"]
    lines = response.text.splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert all(r["event_type"] == "Query" and r["patient_id"] == ct["patient_id"] for r in records)
    assert datetime.fromisoformat(records[0]["at"]).tzinfo is not None
    [exported] = rows(client, archive, AuditEvent.action == "audit-export")
    assert (exported.event_type, exported.username, exported.outcome) == (
        "Audit Log Used",
        "admin",
        0,
    )
    assert exported.path == "/api/audit/export?user=doctor"


def test_export_streams_past_one_chunk(client: TestClient, archive: Archive) -> None:
    audit_log = client.app.state.audit  # type: ignore[attr-defined]
    for n in range(2500):
        audit_log.record(
            username="bulk",
            client="10.1.1.1",
            action="search",
            method="GET",
            path=f"/{n}",
            status=200,
        )
    audit_log.flush()
    response = client.get("/api/audit/export", params={"user": "bulk"}, auth=ADMIN)
    paths = [json.loads(line)["path"] for line in response.text.splitlines()]
    assert paths == [f"/{n}" for n in reversed(range(2500))]


def test_only_admins_read_the_trail(client: TestClient, archive: Archive) -> None:
    for url in ("/api/audit", "/api/audit/export"):
        assert client.get(url, auth=DOCTOR).status_code == 403
        assert client.get(url).status_code == 401
    denied = rows(client, archive, AuditEvent.username == "doctor")
    assert [(e.event_type, e.outcome, e.status) for e in denied] == [
        ("Audit Log Used", 4, 403),
        ("Audit Log Used", 4, 403),
    ]


def test_failed_sign_ins_are_audited(client: TestClient, archive: Archive) -> None:
    assert client.get("/api/me", auth=("doctor", "not-the-password")).status_code == 401
    wrong = {"username": "doctor", "password": "not-the-password"}
    assert client.post("/api/auth/token", json=wrong).status_code == 401
    ghost = {"username": "ghost", "password": "whatever-it-is"}
    assert client.post("/api/auth/token", json=ghost).status_code == 401
    bearer = {"Authorization": "Bearer forged.token.value"}
    assert client.get("/dicomweb/studies", headers=bearer).status_code == 401
    assert client.get("/dicomweb/studies").status_code == 401  # no credentials: no event
    events = rows(client, archive)
    assert [(e.username, e.path) for e in events] == [
        ("doctor", "/api/me"),
        ("doctor", "/api/auth/token"),
        ("ghost", "/api/auth/token"),
        (events[3].username, "/dicomweb/studies"),
    ]
    assert events[3].username.startswith("bearer:")
    assert "forged" not in events[3].username
    for event in events:
        assert (event.action, event.event_type, event.outcome, event.status) == (
            "sign-in",
            "User Authentication",
            4,
            401,
        )
        assert event.client == "testclient"


def test_a_flood_of_wrong_passwords_is_throttled(client: TestClient, archive: Archive) -> None:
    audit_log = client.app.state.audit  # type: ignore[attr-defined]
    audit_log.throttle.limit = 3
    for _ in range(10):
        assert client.get("/api/me", auth=("nobody", "wrong-password")).status_code == 401
    events = rows(client, archive, AuditEvent.username == "nobody")
    assert [e.event_type for e in events] == ["User Authentication"] * 3 + ["Security Alert"]
    assert events[-1].path.startswith("7 more failed sign-ins")
    assert events[-1].outcome == 4


def test_denied_requests_are_audited(
    client: TestClient, archive: Archive, ct: dict[str, str]
) -> None:
    assert client.get("/api/nodes", auth=DOCTOR).status_code == 403
    other_site = ("elsewhere", "elsewhere-password")
    study = f"/dicomweb/studies/{ct['study']}/series"
    assert client.get(study, auth=other_site).status_code == 404
    [denied] = rows(client, archive, AuditEvent.username == "doctor")
    assert (denied.action, denied.event_type, denied.outcome, denied.status) == (
        "denied",
        "Security Alert",
        4,
        403,
    )
    [hidden] = rows(client, archive, AuditEvent.username == "elsewhere")
    assert (hidden.action, hidden.event_type, hidden.outcome, hidden.status) == (
        "search",
        "Query",
        4,
        404,
    )
    assert (hidden.study_instance_uid, hidden.site) == (ct["study"], "QN")


def test_no_route_changes_the_trail(client: TestClient, archive: Archive) -> None:
    assert client.get("/dicomweb/studies", auth=DOCTOR).status_code == 200
    before = rows(client, archive)
    # FastAPI nests included routers (app.routes is no longer flat): walk the schema.
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    audit_paths = {p: set(ops) for p, ops in paths.items() if p.startswith("/api/audit")}
    assert audit_paths == {"/api/audit": {"get"}, "/api/audit/export": {"get"}}
    for method in ("DELETE", "PUT", "PATCH", "POST"):
        for url in ("/api/audit", f"/api/audit/{before[0].id}", "/api/audit/export"):
            assert client.request(method, url, auth=ADMIN).status_code in (404, 405)
    with archive.sessions() as session:
        count = session.scalar(select(func.count()).select_from(AuditEvent))
    assert count == len(before)  # the refused attempts wrote nothing, changed nothing


def test_only_storage_audit_writes_audit_events_and_only_inserts() -> None:
    """Append-only by construction: no module updates or deletes an AuditEvent."""
    writers = []
    for path in sorted(Path(ROOT).glob("*/**/*.py")):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("insert", "update", "delete")
                and any(isinstance(a, ast.Name) and a.id == "AuditEvent" for a in node.args)
            ):
                writers.append((path.relative_to(ROOT).as_posix(), node.func.id))
    assert writers == [("storage/audit.py", "insert")]


def test_share_links_refused_are_audited_and_tokens_never_logged(
    client: TestClient, archive: Archive, ct: dict[str, str]
) -> None:
    made = client.post(f"/api/studies/{ct['study']}/share-links", json={"pin": "2468"}, auth=DOCTOR)
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    assert client.get(f"/api/share/{token}", headers={"X-Share-PIN": "1111"}).status_code == 403
    assert client.get(f"/api/share/{token}", headers={"X-Share-PIN": "2468"}).status_code == 200
    assert client.get("/api/share/not-a-token").status_code == 401
    events = rows(client, archive, AuditEvent.path.like("/api/share/%"))
    assert [(e.username, e.event_type, e.outcome) for e in events] == [
        ("share-link", "User Authentication", 4),
        (events[1].username, "DICOM Instances Accessed", 0),
        ("share-link", "User Authentication", 4),
    ]
    assert events[1].username.startswith("share-link:")
    assert events[1].patient_id == ct["patient_id"]
    assert [e.path for e in events] == ["/api/share/<token>"] * 3
    everything = client.get("/api/audit/export", auth=ADMIN).text
    assert token not in everything


def test_the_trail_outlives_a_restart_of_the_application(
    client: TestClient, archive: Archive
) -> None:
    """A second lifespan (the writer thread stopped at the first shutdown) still writes."""
    app = create_app(archive)
    for _ in range(2):
        with TestClient(app) as again:
            assert again.get("/dicomweb/studies", auth=DOCTOR).status_code == 200
    app.state.audit.close()  # returns: nothing waits on a stopped thread
    assert len(rows(client, archive, AuditEvent.username == "doctor")) == 2
