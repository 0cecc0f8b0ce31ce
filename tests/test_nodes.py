"""The remote-node registry: ``pacs node``, ``/api/nodes``, and what a node's entry
changes on the wire (its site becomes the issuer of what it stores; a node without
the store right is refused)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from api.app import create_app
from storage import Archive
from storage.models import Patient
from storage.users import Role, create_user
from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server, require_tool, run
from tests.test_cli import pacs


def test_node_add_list_remove_on_the_command_line(tmp_path: Path) -> None:
    added = pacs(
        tmp_path, "node", "add", "central", "--ae", "CENTRAL", "--host", "10.1.2.3",
        "--port", "104", "--site", "BV-TRUNG-UONG", "--no-store",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = pacs(tmp_path, "node", "list")
    assert re.search(
        r"central\tCENTRAL@10.1.2.3:104\tsite=BV-TRUNG-UONG\tquery,retrieve", listed.stdout
    )
    again = pacs(tmp_path, "node", "add", "central", "--ae", "X", "--host", "h", "--port", "1")
    assert again.returncode == 1 and "already exists" in again.stderr
    bad_ae = pacs(tmp_path, "node", "add", "b", "--ae", "A" * 17, "--host", "h", "--port", "1")
    assert bad_ae.returncode == 1 and "1 to 16 characters" in bad_ae.stderr
    bad_port = pacs(tmp_path, "node", "add", "c", "--ae", "C", "--host", "h", "--port", "70000")
    assert bad_port.returncode == 1 and "port" in bad_port.stderr
    assert pacs(tmp_path, "node", "remove", "central").returncode == 0
    assert pacs(tmp_path, "node", "list").stdout == ""
    missing = pacs(tmp_path, "node", "remove", "central")
    assert missing.returncode == 1 and "no node" in missing.stderr
    for verb in ("node", "node add", "node list", "node remove"):
        assert pacs(tmp_path, *verb.split(), "--help").returncode == 0


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def test_nodes_api_is_for_admins(client: TestClient) -> None:
    admin = ("admin", "admin-password")
    body = {"name": "hue", "ae_title": "HUE_PACS", "host": "127.0.0.1", "port": 11112}
    assert (
        client.post("/api/nodes", json=body, auth=("doctor", "doctor-password")).status_code == 403
    )
    assert client.get("/api/nodes", auth=("doctor", "doctor-password")).status_code == 403
    created = client.post(
        "/api/nodes", json={**body, "site": "BV-HUE", "may_query": False}, auth=admin
    )
    assert created.status_code == 201, created.text
    assert created.json()["may_query"] is False and created.json()["may_store"] is True
    assert client.post("/api/nodes", json=body, auth=admin).status_code == 409
    bad = client.post("/api/nodes", json={**body, "name": "x", "ae_title": "A\\B"}, auth=admin)
    assert bad.status_code == 422 and "AE title" in bad.text
    assert client.post("/api/nodes", json={**body, "port": 0}, auth=admin).status_code == 422
    listed = client.get("/api/nodes", auth=admin).json()
    assert [(n["name"], n["ae_title"], n["site"]) for n in listed] == [
        ("hue", "HUE_PACS", "BV-HUE")
    ]
    assert client.delete("/api/nodes/hue", auth=admin).status_code == 204
    assert client.delete("/api/nodes/hue", auth=admin).status_code == 404
    assert client.get("/api/nodes", auth=admin).json() == []


def test_a_nodes_site_is_the_issuer_and_store_rights_hold(server: Server, tmp_path: Path) -> None:
    """PS3.3 C.7.1.1: IssuerOfPatientID absent -> the sending node's configured site."""
    storescu = require_tool("storescu")
    api = httpx.Client(base_url=server.base_url, auth=("admin", ADMIN_PASSWORD))
    for name, ae, may_store in (("hagiang", "HAGIANG_CT", True), ("readonly", "VIEWER", False)):
        response = api.post(
            "/api/nodes",
            json={"name": name, "ae_title": ae, "host": "127.0.0.1", "port": 104,
                  "site": f"SITE-{name.upper()}", "may_store": may_store},
        )  # fmt: skip
        assert response.status_code == 201, response.text
    source = sorted((SAMPLES / "ct_latin1").rglob("*.dcm"))[0]
    no_issuer = tmp_path / "no-issuer.dcm"
    ds = dcmread(source)
    del ds.IssuerOfPatientID
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(no_issuer)

    sent = run([storescu, "-aet", "HAGIANG_CT", "-aec", "PACS", "127.0.0.1",
                str(server.dicom_port), str(no_issuer), str(source)])  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    refused = run([storescu, "-d", "-aet", "VIEWER", "-aec", "PACS", "127.0.0.1",
                   str(server.dicom_port), str(no_issuer)])  # fmt: skip
    output = refused.stdout + refused.stderr
    assert "0x0124" in output and "may not store" in output
    with server.opened() as archive, archive.sessions() as session:
        issuers = sorted(
            session.scalars(select(Patient.issuer).where(Patient.patient_id == ds.PatientID))
        )
    assert issuers == ["BV-TINH-HAGIANG", "SITE-HAGIANG"]
