"""Injection and traversal attempts in every path segment and query parameter.

The operations are walked from the application's OpenAPI schema: every path
parameter of every operation (study/series/instance UIDs, frame lists, report ids,
share tokens, node and rule names, grant ids...) and every declared query parameter
gets each :data:`HOSTILE` value in turn, the other parameters holding real values
(so the hostile one is what the route has to deal with), sent in turn by an admin
and by a radiologist (whose requests go through site scoping). On PostgreSQL the
values aimed at SQL and number parsing (:data:`SQL_HOSTILE`) are sent. The query parameters that
routes read from the raw query string and so do not declare (QIDO-RS match keys,
WADO-URI, ``rendered``) are added from :data:`UNDECLARED_QUERY`.

Every answer must be a 4xx, or a 2xx/3xx with a normal result (a free-text match
that matches nothing): never a 5xx. No answer may carry a file from outside the
data folder (a sentinel file planted beside it, and ``/etc/passwd``), nor a header
split by CR/LF. Afterwards the index is exactly what it was (the audit trail aside,
which records every attempt, and share-link use counters, which count opens).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import select

from api.app import create_app
from storage import Archive
from storage.models import AuditEvent, Base
from storage.users import Role, create_user
from tests.conftest import SAMPLES

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-password").decode()}
DOCTOR = {"Authorization": "Basic " + base64.b64encode(b"doctor:doctor-password").decode()}
SENTINEL = "SENTINEL-OUTSIDE-THE-DATA-DIR-4242"

HOSTILE = [
    "' OR 1=1--",
    "1' OR '1'='1",
    "'; DROP TABLE studies;--",
    '" OR ""="',
    "1; SELECT pg_sleep(5)--",
    "1 UNION SELECT username, password_hash FROM users--",
    "%",
    "_",
    "*",
    "\\",
    "%00",
    "\x00",
    "1.2.3\x00.4",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "..\\..\\..\\secret.txt",
    "../../../secret.txt",
    "../../../../../../../../etc/passwd",
    "/etc/passwd",
    "x" * 10_000,
    "1." * 40 + "1",
    "\u202etxt.exe",
    "<script>alert(1)</script>",
    "%0d%0aX-Injected:%201",
    "\r\nX-Injected: 1",
    "${jndi:ldap://127.0.0.1/a}",
    "{{7*7}}",
    "-1",
    "99999999999999999999999",
    "1e309",
    "NaN",
    "²",  # str.isdigit() is true, int() refuses it
    "9" * 5000,  # past int()'s 4300-digit limit
    "١٢",  # Arabic-Indic digits: int() takes them
    "Nguyễn^Văn",
]

# What PostgreSQL gets (the whole table runs on SQLite): the values aimed at SQL and at
# number parsing, where the two databases differ.
SQL_HOSTILE = [v for v in HOSTILE if any(c in v for c in "'\";%_*\x00") or v.lstrip("-").isdigit()]

# Query parameters routes read from the raw query string, by path.
QIDO_KEYS = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyInstanceUID",
    "AccessionNumber",
    "ModalitiesInStudy",
    "00100020",
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
]
RENDERED_KEYS = ["window", "preset", "viewport", "quality", "annotation", "accept", "iccprofile"]
WADO_URI_KEYS = [
    "requestType",
    "studyUID",
    "seriesUID",
    "objectUID",
    "contentType",
    "transferSyntax",
    "frameNumber",
    "rows",
    "columns",
    "windowCenter",
    "windowWidth",
    "region",
    "anonymize",
    "charset",
    "annotation",
    "imageQuality",
    "presentationUID",
]
UNDECLARED_QUERY = {
    "/dicomweb/studies": QIDO_KEYS,
    "/dicomweb/studies/{study}/series": QIDO_KEYS,
    "/dicomweb/studies/{study}/series/{series}/instances": QIDO_KEYS,
    "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered": RENDERED_KEYS,
    "/wado": WADO_URI_KEYS,
}
# Snapshot columns that legitimately move: opening a share link counts a use.
MOVING = {("share_links", "uses")}


@pytest.fixture
def setup(archive: Archive, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A client signed in as admin, and a real value for every path parameter."""
    (tmp_path / "secret.txt").write_text(SENTINEL)  # beside the data folder, not in it
    paths = sorted((SAMPLES / "ct_chest").rglob("*.dcm"))
    for path in sorted(SAMPLES.rglob("*.dcm")):
        assert archive.ingest(path).ok
    first = dcmread(paths[0], stop_before_pixels=True)
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        session.commit()
    with TestClient(create_app(archive), headers=ADMIN, raise_server_exceptions=False) as client:
        study = first.StudyInstanceUID
        report = client.post(f"/api/studies/{study}/reports", json={"findings": "normal"})
        link = client.post(f"/api/studies/{study}/share-links", json={})
        node = {"name": "peer", "ae_title": "PEER", "host": "127.0.0.1", "port": 11113}
        rule = {"name": "to-peer", "destinations": ["peer"]}
        grant = client.post(f"/api/studies/{study}/access", json={"site": "QN"})
        for made in (report, link, grant, client.post("/api/nodes", json=node)):
            assert made.status_code == 201, made.text
        assert client.post("/api/routes", json=rule).status_code == 201
        yield (
            client,
            {
                "study": study,
                "series": first.SeriesInstanceUID,
                "instance": first.SOPInstanceUID,
                "frames": "1",
                "number": "1",
                "tags": "7FE00010",
                "report_id": str(report.json()["id"]),
                "link_id": str(link.json()["id"]),
                "token": link.json()["token"],
                "grant_id": str(grant.json()["id"]),
                "name": "peer",
                "job_id": "1",
                "username": "someone-else",
                "patient_id": str(first.PatientID),
            },
        )


def index_snapshot(archive: Archive) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table but the audit trail, as text."""
    snapshot = {}
    with archive.sessions() as session:
        for table in Base.metadata.sorted_tables:
            if table.name == AuditEvent.__tablename__:
                continue
            columns = [c for c in table.columns if (table.name, c.name) not in MOVING]
            result = session.execute(select(*columns))
            snapshot[table.name] = sorted(tuple(map(str, row)) for row in result)
    return snapshot


def problems_with(response: httpx.Response) -> list[str]:
    found = []
    if response.status_code >= 500:
        found.append(f"status {response.status_code}: {response.text[:300]}")
    body = response.content
    if SENTINEL.encode() in body or b"root:x:0:0" in body:
        found.append("a file from outside the data folder was answered")
    for name, value in response.headers.items():
        if "\r" in value or "\n" in value or name.lower() == "x-injected":
            found.append(f"header split: {name}: {value[:100]!r}")
    return found


def operations(client: TestClient) -> Iterator[tuple[str, str, dict[str, Any]]]:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def test_hostile_values_everywhere(
    setup: tuple[TestClient, dict[str, str]], archive: Archive, database_url: str
) -> None:
    client, real = setup
    values = HOSTILE if database_url.startswith("sqlite") else SQL_HOSTILE
    before = index_snapshot(archive)
    cases, failures = 0, []

    def attempt(method: str, url: str, params: dict[str, str], body: bool, what: str) -> None:
        nonlocal cases
        # Alternate the caller: an admin sees everything, a radiologist's requests go
        # through the site scoping (its study lookups, its SQL conditions).
        caller = ADMIN if cases % 2 == 0 else DOCTOR
        try:
            response = client.request(
                method, url, params=params, json={} if body else None, headers=caller
            )
        except httpx.InvalidURL:
            return  # the client itself refuses to send it: not a request the server sees
        cases += 1
        failures.extend(f"{method} {what}: {problem}" for problem in problems_with(response))

    for method, template, operation in operations(client):
        declared = operation.get("parameters", [])
        in_path = [p["name"] for p in declared if p["in"] == "path"]
        in_query = [p["name"] for p in declared if p["in"] == "query"]
        if method == "GET":
            in_query += UNDECLARED_QUERY.get(template, [])
        body = "requestBody" in operation
        base_query = (
            {
                "requestType": "WADO",
                "studyUID": real["study"],
                "seriesUID": real["series"],
                "objectUID": real["instance"],
            }
            if template == "/wado"
            else {}
        )
        valid_path = template.format(**{name: real[name] for name in in_path})
        for value in values:
            # Percent-encoded, as a client would send a segment; and raw, where that
            # differs in what it means (a traversal the router or a proxy might decode).
            forms = [quote(value, safe="")]
            if any(c in value for c in "/\\%.") and len(value) < 100:
                forms.append(value)
            for name in in_path:
                for form in forms:
                    url = template.format(**{**real, name: form})
                    attempt(method, url, base_query, body, f"{template} {name}={value[:40]!r}")
            for name in in_query:
                params = {**base_query, name: value}
                attempt(method, valid_path, params, body, f"{template}?{name}={value[:40]!r}")
            if template in UNDECLARED_QUERY and method == "GET":  # a hostile match key
                attempt(method, valid_path, {value: "1"}, body, f"{template}?{value[:40]!r}=1")

    print(f"\ninjection ({database_url.split(':')[0]}): {cases} requests")
    assert cases > 1000
    assert not failures, "\n".join(failures[:50])
    assert index_snapshot(archive) == before
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.sessions() as session:  # the refused attempts are in the audit trail
        refused = session.scalars(select(AuditEvent).where(AuditEvent.outcome != 0)).all()
    assert len(refused) > 500


def test_the_server_errors_this_suite_found_are_refusals(
    setup: tuple[TestClient, dict[str, str]],
) -> None:
    """Each was a 500 before its fix (the module named), for an admin or a radiologist."""
    client, real = setup
    huge = "99999999999999999999999"
    instance = f"/dicomweb/studies/{real['study']}/series/{real['series']}/instances/"
    instance += real["instance"]
    wado = {
        "requestType": "WADO",
        "studyUID": real["study"],
        "seriesUID": real["series"],
        "objectUID": real["instance"],
        "contentType": "image/jpeg",
    }
    found = [
        ("/dicomweb/studies", {"offset": huge}),  # qido: SQLite cannot take the integer
        ("/dicomweb/studies", {"limit": "²"}),  # qido: "²".isdigit(), int("²") fails
        (f"{instance}/rendered", {"quality": "²"}),  # rendered
        (f"{instance}/rendered", {"quality": "9" * 5000}),  # rendered: int() digit limit
        (f"{instance}/rendered", {"viewport": "²,²"}),  # rendered
        ("/wado", {**wado, "frameNumber": "²"}),  # wado_uri
        ("/wado", {**wado, "rows": "²"}),  # rendered, through WADO-URI
        (f"/api/reports/{huge}", {}),  # params.RowId
        (f"/api/jobs/{huge}", {}),
        ("/api/jobs", {"offset": huge}),
        (f"/api/share/{real['token']}/reports/{huge}/pdf", {}),
        ("/api/audit", {"before": huge}),
        ("/api/reports/²", {}),  # auth: the study of a report, for a scoped caller
        ("/dicomweb/studies", {"PatientName": "\x00"}),  # nul_bytes: PostgreSQL text
        ("/dicomweb/studies/%00/series", {}),
    ]
    for caller in (ADMIN, DOCTOR):
        for url, params in found:
            response = client.get(url, params=params, headers=caller)
            assert 400 <= response.status_code < 500, (url, params, response.text[:200])


def test_a_nul_in_a_json_body_is_refused(setup: tuple[TestClient, dict[str, str]]) -> None:
    """PostgreSQL text cannot hold U+0000: report text and a username with one were 500s."""
    client, real = setup
    reports = f"/api/studies/{real['study']}/reports"
    for method, url, body in (
        ("POST", reports, {"findings": "a\u0000b"}),
        ("PATCH", f"/api/reports/{real['report_id']}", {"impression": "\u0000"}),
        ("POST", "/api/auth/token", {"username": "ad\u0000min", "password": "whatever-it-is"}),
    ):
        response = client.request(method, url, json=body)
        assert response.status_code == 400, (url, response.text)
        assert "NUL" in response.json()["detail"]
    # A backslash followed by "u0000" is text, not a NUL.
    kept = client.post(reports, json={"findings": "C:\\u0000 is a path"})
    assert kept.status_code == 201, kept.text
    assert kept.json()["findings"] == "C:\\u0000 is a path"
