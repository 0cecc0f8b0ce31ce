"""Share links: one study, its images and signed reports, for whoever holds the link."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update

from api.app import create_app
from storage import Archive
from storage.models import AuditEvent, ShareLink
from storage.users import Role, create_user
from tests.test_reports import ingest_study, instance_uids

DOCTOR = ("doctor", "doctor-password")
REFERRING = ("referrer", "referrer-password")


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with archive.sessions() as session:
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        create_user(session, "referrer", "referrer-password", Role.REFERRING)
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def share(client: TestClient, study: str, **body: object) -> dict[str, object]:
    response = client.post(f"/api/studies/{study}/share-links", json=body, auth=DOCTOR)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_link_opens_one_study_and_its_signed_report(client: TestClient, archive: Archive) -> None:
    ct = ingest_study(archive, "ct_chest")
    mr = ingest_study(archive, "mr_brain")
    rid = client.post(f"/api/studies/{ct}/reports", json={"impression": "Bình thường"}, auth=DOCTOR)
    rid = rid.json()["id"]
    draft = client.post(f"/api/studies/{ct}/reports", json={}, auth=DOCTOR).json()["id"]
    client.post(f"/api/reports/{rid}/finalize", json={"signer": "BS. Lê Thị Mai"}, auth=DOCTOR)
    link = share(client, ct, pin="4711")
    base = link["url"]
    assert link["has_pin"] and link["active"]
    assert client.post(f"/api/studies/{ct}/share-links", json={}, auth=REFERRING).status_code == 403

    assert client.get(str(base)).status_code == 403  # the PIN is needed
    pin = {"X-Share-PIN": "4711"}
    opened = client.get(str(base), headers=pin)
    assert opened.status_code == 200, opened.text
    study = opened.json()
    assert study["study_instance_uid"] == ct
    assert study["patient_name"] == "Nguyễn^Văn An"
    assert sum(len(s["instances"]) for s in study["series"]) == 24  # the images, not the PDF
    assert [(r["id"], r["finalized_by"]) for r in study["reports"]] == [(rid, "BS. Lê Thị Mai")]

    image = client.get(study["series"][0]["instances"][3]["rendered_url"], headers=pin)
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).format == "JPEG"
    pdf = client.get(study["reports"][0]["pdf_url"], headers=pin)
    assert pdf.content == client.get(f"/api/reports/{rid}/pdf", auth=DOCTOR).content
    zipped = client.get(study["download_url"], headers=pin)
    assert "DICOMDIR" in zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()

    # Nothing else: another study's image, a draft, another route.
    other_image = instance_uids(archive, mr)[0]
    assert client.get(f"{base}/instances/{other_image}/rendered", headers=pin).status_code == 404
    assert client.get(f"{base}/reports/{draft}/pdf", headers=pin).status_code == 404
    token = str(link["token"])
    for path in (f"/dicomweb/studies/{ct}/series", f"/api/studies/{ct}/reports", "/api/worklist"):
        assert client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 401

    listed = client.get(f"/api/studies/{ct}/share-links", auth=DOCTOR).json()
    assert [(item["id"], item["uses"]) for item in listed] == [(link["id"], 6)]  # PIN right
    assert "token" not in listed[0]

    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.sessions() as session:
        uses = session.execute(
            select(AuditEvent.action, AuditEvent.study_instance_uid, AuditEvent.status).where(
                AuditEvent.username == f"share-link:{link['id']}"
            )
        ).all()
    assert {(a, s) for a, s, _ in uses} >= {
        ("share-open", ct),
        ("share-rendered", ct),
        ("share-pdf", ct),
        ("share-download", ct),
    }
    assert ("share-rendered", ct, 404) in uses


def test_revoked_expired_and_guessed_links_stop_working(
    client: TestClient, archive: Archive
) -> None:
    ct = ingest_study(archive, "ct_chest")
    revoked = share(client, ct)
    assert client.get(str(revoked["url"])).status_code == 200
    assert client.delete(f"/api/share-links/{revoked['id']}", auth=DOCTOR).json()["active"] is False
    assert client.get(str(revoked["url"])).status_code == 410

    expired = share(client, ct, expires_in_minutes=5)
    with archive.sessions() as session:
        session.execute(
            update(ShareLink)
            .where(ShareLink.id == expired["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
    assert client.get(str(expired["url"])).status_code == 410

    guarded = share(client, ct, pin="123456")
    for attempt in range(5):
        wrong = client.get(str(guarded["url"]), headers={"X-Share-PIN": f"00000{attempt}"})
        assert wrong.status_code == 403
    right = client.get(str(guarded["url"]), headers={"X-Share-PIN": "123456"})
    assert right.status_code == 410  # five wrong PINs revoked it

    # A right PIN is remembered (argon2 once, not per slice), the link's state is not.
    remembered = share(client, ct, pin="2468")
    for _ in range(2):
        assert (
            client.get(str(remembered["url"]), headers={"X-Share-PIN": "2468"}).status_code == 200
        )
    assert client.get(str(remembered["url"]), headers={"X-Share-PIN": "2469"}).status_code == 403
    client.delete(f"/api/share-links/{remembered['id']}", auth=DOCTOR)
    assert client.get(str(remembered["url"]), headers={"X-Share-PIN": "2468"}).status_code == 410

    assert client.get("/api/share/not-a-token").status_code == 401
    for bad in (
        {"pin": "12"},
        {"pin": "abcd"},
        {"expires_in_minutes": 1},
        {"expires_in_minutes": 10**6},
    ):
        response = client.post(f"/api/studies/{ct}/share-links", json=bad, auth=DOCTOR)
        assert response.status_code == 422, bad
    unknown = client.post("/api/studies/1.2.3/share-links", json={}, auth=DOCTOR)
    assert unknown.status_code == 404
    assert client.delete("/api/share-links/999999", auth=DOCTOR).status_code == 404
