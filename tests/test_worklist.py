"""The worklist query (storage/worklist.py) on SQLite and PostgreSQL.

The browser tests (tests/test_viewer.py) drive ``GET /api/worklist`` on SQLite; this
checks the SQL itself on both databases: Vietnamese folding, the site column,
ranges, paging and the order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storage import Archive
from storage.query import QueryError
from storage.worklist import WorklistFilter, worklist
from tests.conftest import sites_archive

SITES = {"ct_chest": "BV Đa khoa Hà Giang", "mr_brain": "BV Cao Bằng"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    arch = sites_archive(request, tmp_path_factory.mktemp("worklist"), SITES)
    yield arch
    arch.sessions.kw["bind"].dispose()


def ids(archive: Archive, limit: int = 50, offset: int = 0, **wanted: str) -> list[str]:
    with archive.sessions() as session:
        rows, _ = worklist(session, WorklistFilter(**wanted), limit, offset)
    return [row.patient_id for row in rows]


def test_newest_first_with_what_a_row_shows(archive: Archive) -> None:
    with archive.sessions() as session:
        rows, more = worklist(session, WorklistFilter(), 10)
    assert not more
    assert [r.study_date for r in rows] == ["20240320", "20240318", "20240314", "20240312"]
    ct = next(r for r in rows if r.patient_id == "BN0001")
    assert ct.patient_name == "Nguyễn^Văn An"
    assert ct.modalities == ["CT"] and ct.number_of_instances == 24 and ct.number_of_series == 1
    assert ct.source_site == "BV Đa khoa Hà Giang"
    assert ct.patient_sex == "M" and ct.patient_age == "061Y"


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ({"patient_name": "nguyen"}, ["BN0001"]),
        ({"patient_name": "NGUYỄN"}, ["BN0001"]),
        ({"patient_name": "dang"}, ["BN0002"]),
        ({"patient_name": "hoa"}, ["BN0002"]),  # a given name: fuzzy
        ({"patient_name": "nguyen an"}, ["BN0001"]),  # two words, two components
        ({"patient_name": "an nguyen"}, []),  # in order
        ({"patient_name": "muller"}, ["BN0004"]),
        ({"patient_id": "BN0003"}, ["BN0003"]),
        ({"accession_number": "HG2403"}, ["BN0004", "BN0003", "BN0002", "BN0001"]),
        ({"modality": "mr"}, ["BN0002"]),
        ({"date_from": "20240314"}, ["BN0004", "BN0003", "BN0002"]),
        ({"date_to": "20240314"}, ["BN0002", "BN0001"]),
        ({"site": "cao bằng"}, ["BN0002"]),
        ({"site": "%"}, []),  # LIKE characters are matched literally
        ({"patient_name": "nguyen", "modality": "MR"}, []),
    ],
)
def test_filters(archive: Archive, wanted: dict[str, str], expected: list[str]) -> None:
    assert ids(archive, **wanted) == expected


def test_paging(archive: Archive) -> None:
    assert ids(archive, limit=2) == ["BN0004", "BN0003"]
    assert ids(archive, limit=2, offset=2) == ["BN0002", "BN0001"]
    with archive.sessions() as session:
        assert worklist(session, WorklistFilter(), 3)[1] is True
        assert worklist(session, WorklistFilter(), 4)[1] is False


@pytest.mark.parametrize(
    "wanted",
    [{"date_from": "2024-03"}, {"date_to": "yesterday"}, {"modality": "C;T"}],
)
def test_malformed_filters_are_refused(archive: Archive, wanted: dict[str, str]) -> None:
    with pytest.raises(QueryError), archive.sessions() as session:
        worklist(session, WorklistFilter(**wanted), 10)
