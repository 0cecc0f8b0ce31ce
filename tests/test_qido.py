"""QIDO-RS: the searches OHIF, Weasis and scripts send, and the ones attackers send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from pacs.settings import Settings
from storage import Archive
from storage.models import AuditEvent
from storage.users import Role, create_user
from tests.conftest import (
    ADMIN_PASSWORD,
    SAMPLES,
    Server,
    fresh_database_url,
    migrated_archive,
)

AUTH = ("admin", "admin-password")
CT_STUDY = "1.2.826.0.1.3680043.8.498.10370521667092446275804229257105587926"
MR_STUDY = "1.2.826.0.1.3680043.8.498.10852187841397030210016674020578427062"
CT_SERIES = "1.2.826.0.1.3680043.8.498.63156152943181063103868216903075246112"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """One loaded archive per database for the whole module: these tests only read."""
    folder = tmp_path_factory.mktemp("qido")
    arch = migrated_archive(fresh_database_url(request, folder), folder)
    yield arch
    arch.sessions.kw["bind"].dispose()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    for path in sorted(SAMPLES.rglob("*.dcm")):
        assert archive.ingest(path).ok
    with archive.sessions() as session:
        create_user(session, "admin", "admin-password", Role.ADMIN)
        create_user(session, "ct-room", "modality-pass", Role.MODALITY)
        session.commit()
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def names(results: list[dict[str, Any]]) -> list[str]:
    return sorted(r["00100010"]["Value"][0]["Alphabetic"] for r in results)


def value(result: dict[str, Any], tag: str) -> Any:
    return result[tag]["Value"][0]


def get(client: TestClient, url: str, **kwargs: Any) -> Any:
    response = client.get(url, auth=AUTH, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    return response.json()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientName=nguyen&fuzzymatching=true", ["Nguyễn^Văn An"]),
        ("PatientName=van&fuzzymatching=true", ["Nguyễn^Văn An"]),
        ("PatientName=dang*", ["Đặng^Thị Hoa"]),
        ("PatientName=%C4%90%E1%BA%B7ng*", ["Đặng^Thị Hoa"]),  # percent-encoded Đặng*
        ("PatientName=Đặng*", ["Đặng^Thị Hoa"]),  # raw
        ("PatientName=TRAN", ["Trần^Minh Đức"]),  # family name, any case
        ("PatientName=m?ller*", ["Müller^Jürgen"]),
        ("PatientName=nguyen", ["Nguyễn^Văn An"]),
        ("PatientName=an&fuzzymatching=false", []),
        ("00100020=BN0002", ["Đặng^Thị Hoa"]),
        ("PatientID=BN000*", ["Müller^Jürgen", "Nguyễn^Văn An", "Trần^Minh Đức", "Đặng^Thị Hoa"]),
        ("ModalitiesInStudy=MR", ["Đặng^Thị Hoa"]),
        ("ModalitiesInStudy=MR,XA", ["Trần^Minh Đức", "Đặng^Thị Hoa"]),
        (f"StudyInstanceUID={CT_STUDY},{MR_STUDY}", ["Nguyễn^Văn An", "Đặng^Thị Hoa"]),
        (f"StudyInstanceUID={CT_STUDY}%5C{MR_STUDY}", ["Nguyễn^Văn An", "Đặng^Thị Hoa"]),
        ("AccessionNumber=HG24031201", ["Nguyễn^Văn An"]),
        ("StudyDate=19000101-19991231", []),
        ("PatientName=", ["Müller^Jürgen", "Nguyễn^Văn An", "Trần^Minh Đức", "Đặng^Thị Hoa"]),
    ],
)
def test_study_matching(client: TestClient, query: str, expected: list[str]) -> None:
    assert names(get(client, f"/dicomweb/studies?{query}")) == expected


def test_date_ranges(client: TestClient) -> None:
    every = get(client, "/dicomweb/studies")
    dates = sorted(value(r, "00080020") for r in every)
    low, high = dates[0], dates[-1]
    assert len(get(client, f"/dicomweb/studies?StudyDate={low}-{high}")) == 4
    assert len(get(client, f"/dicomweb/studies?StudyDate={low}")) == dates.count(low)
    assert len(get(client, f"/dicomweb/studies?StudyDate=-{low}")) == dates.count(low)
    assert len(get(client, f"/dicomweb/studies?StudyDate={high}-")) == dates.count(high)


def test_study_results_carry_what_ohif_reads(client: TestClient) -> None:
    [study] = get(client, f"/dicomweb/studies?StudyInstanceUID={CT_STUDY}")
    assert value(study, "00201208") == 24  # NumberOfStudyRelatedInstances
    assert value(study, "00201206") == 1  # NumberOfStudyRelatedSeries
    assert study["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert value(study, "00081190").endswith(f"/dicomweb/studies/{CT_STUDY}")
    assert value(study, "00080056") == "ONLINE"
    assert study["00100010"]["vr"] == "PN"


def test_includefield(client: TestClient) -> None:
    url = f"/dicomweb/studies?StudyInstanceUID={CT_STUDY}"
    [plain] = get(client, url)
    assert "00100030" in plain and "00101010" not in plain  # PatientAge is not a default
    [extra] = get(client, url + "&includefield=PatientAge,00081030&includefield=NotAThing")
    assert "00101010" in extra and "00081030" in extra
    [every] = get(client, url + "&includefield=all")
    assert "00180015" not in every and "00101020" in every  # study level and up only


def test_series_and_instances_at_every_path(client: TestClient) -> None:
    series = get(client, f"/dicomweb/studies/{CT_STUDY}/series")
    assert [value(s, "0020000E") for s in series] == [CT_SERIES]
    assert value(series[0], "00201209") == 24
    across = get(client, "/dicomweb/series?Modality=CT")
    assert len(across) == 2 and all("00100010" in s for s in across)  # study attributes too
    url = f"/dicomweb/studies/{CT_STUDY}/series/{CT_SERIES}/instances"
    instances = get(client, url)
    assert [value(i, "00200013") for i in instances] == list(range(1, 25))
    assert len(get(client, f"/dicomweb/studies/{CT_STUDY}/instances")) == 24
    xa = get(client, "/dicomweb/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.12.1")
    assert len(xa) == 1 and value(xa[0], "00280008") == 30  # NumberOfFrames
    assert value(xa[0], "00083002") == "1.2.840.10008.1.2.4.90"


def test_limit_offset_and_warning(client: TestClient) -> None:
    everything = get(client, f"/dicomweb/studies/{CT_STUDY}/instances")
    page = client.get(f"/dicomweb/studies/{CT_STUDY}/instances?limit=10&offset=20", auth=AUTH)
    assert [value(i, "00080018") for i in page.json()] == [
        value(i, "00080018") for i in everything[20:24]
    ]
    assert "warning" not in page.headers
    capped = client.get("/dicomweb/instances?limit=5000", auth=AUTH)
    assert len(capped.json()) == 43 and "warning" not in capped.headers


def test_large_results_are_gzipped(client: TestClient) -> None:
    response = client.get("/dicomweb/instances", auth=AUTH, headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert len(response.json()) == 43


@pytest.mark.parametrize(
    "query",
    [
        "NotAKeyword=1",
        "ffffffff=1",
        "limit=-1",
        "limit=ten",
        "offset=-5",
        "fuzzymatching=maybe",
        "StudyDate=2024-13-45",
        "StudyDate=yesterday",
        "StudyDate=-",
        "StudyInstanceUID=1.2.abc",
        "StudyInstanceUID=1.2' OR '1'='1",
        "PatientName=x' OR 1=1 --&StudyDate=20240101'; DROP TABLE studies;--",
        "NumberOfStudyRelatedInstances=many",
        "SOPInstanceUID=1.2.3",  # below the study level
    ],
)
def test_malformed_queries_are_400_never_broader(client: TestClient, query: str) -> None:
    response = client.get(f"/dicomweb/studies?{query}", auth=AUTH)
    assert response.status_code == 400, query
    assert response.json()["detail"]


def test_injection_in_a_value_matches_nothing(client: TestClient) -> None:
    assert get(client, "/dicomweb/studies?PatientName=x%27%20OR%201%3D1%20--") == []
    assert get(client, "/dicomweb/studies?PatientID=%25") == []  # a literal %, not a wildcard
    assert len(get(client, "/dicomweb/studies")) == 4  # the tables are still there


def test_bad_path_uid_and_accept(client: TestClient) -> None:
    assert client.get("/dicomweb/studies/not-a-uid/series", auth=AUTH).status_code == 400
    assert get(client, "/dicomweb/studies/1.2.3.4/series") == []
    xml = client.get("/dicomweb/studies", auth=AUTH, headers={"Accept": "application/dicom+xml"})
    assert xml.status_code == 406


def test_roles_and_audit(client: TestClient, archive: Archive) -> None:
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/dicomweb/studies", auth=("ct-room", "modality-pass")).status_code == 403
    get(client, f"/dicomweb/studies/{CT_STUDY}/series")
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.sessions() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.status == 200)).all()
    assert any(e.study_instance_uid == CT_STUDY and e.username == "admin" for e in events)
    assert all(e.action == "search" for e in events)


def test_dicomweb_client_searches(tmp_path: Any) -> None:
    server = Server(tmp_path / "data")
    server.start()
    try:
        archive = server.archive()
        for path in sorted(SAMPLES.rglob("*.dcm")):
            assert archive.ingest(path).ok
        session = requests.Session()
        session.auth = ("admin", ADMIN_PASSWORD)
        dw = DICOMwebClient(f"{server.base_url}/dicomweb", session=session)
        studies = dw.search_for_studies(
            search_filters={"PatientName": "nguyen"}, fuzzymatching=True
        )
        assert [value(s, "0020000D") for s in studies] == [CT_STUDY]
        series = dw.search_for_series(study_instance_uid=CT_STUDY)
        assert [value(s, "0020000E") for s in series] == [CT_SERIES]
        instances = dw.search_for_instances(
            study_instance_uid=CT_STUDY, series_instance_uid=CT_SERIES, limit=5, offset=5
        )
        assert [value(i, "00200013") for i in instances] == [6, 7, 8, 9, 10]
        mr = dw.search_for_studies(search_filters={"ModalitiesInStudy": "MR"}, fields=["all"])
        assert names(mr) == ["Đặng^Thị Hoa"]
        assert len(dw.search_for_series(search_filters={"Modality": "XA"})) == 1
        assert len(dw.search_for_instances(search_filters={"Modality": "CT"})) == 26
    finally:
        server.stop()


def test_urls_follow_the_public_url_behind_a_proxy(client: TestClient, archive: Archive) -> None:
    settings = Settings(public_url="https://pacs.bv-tinh.vn/archive/")
    with TestClient(create_app(archive, settings)) as proxied:
        [study] = get(proxied, f"/dicomweb/studies?StudyInstanceUID={CT_STUDY}")
    assert value(study, "00081190") == (
        f"https://pacs.bv-tinh.vn/archive/dicomweb/studies/{CT_STUDY}"
    )
