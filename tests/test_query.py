"""Person-name prefixes and fuzzy words are searched from the names when few
names match (storage.query._few_names), by walking the date order otherwise: the
answers are the same either way."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from pacs.charset import name_words
from storage import Archive, query
from storage.models import Patient, PatientNameWord, Study
from storage.query import Level, Query, search
from tests.conftest import SAMPLES, fresh_database_url, migrated_archive

# 60 Nguyễn, 6 Đặng, 3 Lý: a common prefix and rare ones, over 69 studies a day apart.
FAMILIES = {"nguyen": 60, "dang": 6, "ly": 3}
MIDDLE = ("van", "thi", "van", "kim")  # van 35, thi 18, kim 16


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp("names")
    arch = migrated_archive(fresh_database_url(request, folder), folder)
    with arch.sessions() as session:
        _fill(session)
        session.commit()
    yield arch
    arch.sessions.kw["bind"].dispose()


def _fill(session: Session) -> None:
    now = datetime.now(UTC)
    day = 0
    for family, count in FAMILIES.items():
        for number in range(count):
            day += 1
            name = f"{family}^{MIDDLE[number % len(MIDDLE)]} {number}"
            patient = Patient(patient_id=f"{family}-{number}", patient_name=name)
            patient.patient_name_key = name
            session.add(patient)
            session.flush()
            words = [{"word": w, "patient_pk": patient.id} for w in name_words(name)]
            session.execute(insert(PatientNameWord), words)
            session.add(
                Study(
                    patient_pk=patient.id,
                    study_instance_uid=f"1.2.3.{day}",
                    study_date=f"2026{1 + day // 28:02d}{1 + day % 28:02d}",
                    created_at=now,
                    updated_at=now,
                )
            )


def _found(archive: Archive, value: str, limit: int = 101, *, fuzzy: bool = False) -> list[str]:
    ask = _asking(value)
    ask.limit, ask.fuzzy = limit, fuzzy
    with archive.sessions() as session:
        return [row["StudyInstanceUID"] for row in search(session, ask)]


# (value, fuzzy, studies): prefixes common and rare, fuzzy words common and rare
CASES = [
    ("ngu*", False, 60),
    ("Đặ*", False, 6),
    ("ly*", False, 3),
    ("x*", False, 0),
    ("van", True, 35),
    ("THI", True, 18),
    ("ki", True, 16),
    ("Đặng", True, 6),
    ("1", True, 13),
    ("x", True, 0),
]


@pytest.mark.parametrize("few_names", [0, 20, 800])  # 0: always walk the dates
@pytest.mark.parametrize(("value", "fuzzy", "expected"), CASES)
def test_a_name_finds_the_same_studies_from_the_names_or_the_dates(
    archive: Archive,
    monkeypatch: pytest.MonkeyPatch,
    few_names: int,
    value: str,
    fuzzy: bool,
    expected: int,
) -> None:
    monkeypatch.setattr(query, "_FEW_NAMES", few_names)
    found = _found(archive, value, fuzzy=fuzzy)
    assert len(found) == expected
    newest_first = sorted(found, key=lambda uid: int(uid.rsplit(".", 1)[1]), reverse=True)
    assert found == newest_first
    assert _found(archive, value, limit=2, fuzzy=fuzzy) == found[:2]


def test_ingest_writes_the_words_of_a_new_patients_name(archive: Archive) -> None:
    assert archive.ingest(next(SAMPLES.rglob("*.dcm"))).ok
    with archive.sessions() as session:
        key = session.scalar(select(Patient.patient_name_key).order_by(Patient.id.desc()))
        words = session.scalars(
            select(PatientNameWord.word).join(Patient).where(Patient.patient_name_key == key)
        ).all()
    assert key and sorted(words) == sorted(name_words(key))


def test_only_a_rare_prefix_is_searched_from_the_name_index(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query, "_FEW_NAMES", 10)  # Lý (3) is rare here, Nguyễn (60) is not
    plans = {}
    with archive.sessions() as session:
        if session.get_bind().dialect.name != "sqlite":
            assert query._few_names(session, _asking("ly*")) == []  # PostgreSQL plans LIKE
            return
        for value in ("ly*", "ngu*"):
            ask = _asking(value)
            statement = query.build_statement(ask, query.returned_keywords(ask))
            statement = statement.where(*query._few_names(session, ask))
            sql = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
            plan = session.execute(text(f"EXPLAIN QUERY PLAN {sql}")).all()
            plans[value] = " | ".join(str(row[-1]) for row in plan)
    assert "ix_patients_patient_name_key" in plans["ly*"]
    assert "ix_patients_patient_name_key" not in plans["ngu*"]
    assert "ix_studies_date_time" in plans["ngu*"]


def test_postgresql_plans_each_search_for_its_own_values(archive: Archive) -> None:
    """The same search run more often than psycopg's prepare threshold (5) is never a
    server-side prepared statement, whose one generic plan would serve every prefix."""
    with archive.sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            return
        for _ in range(8):
            assert len(list(search(session, _asking("ngu*")))) == 60
        prepared = session.scalar(text("SELECT count(*) FROM pg_prepared_statements"))
    assert prepared == 0


@pytest.mark.parametrize(
    "match", [{"StudyDate": "20260201-"}, {"StudyDate": "20260101-20260201"}, {}]
)
def test_a_page_looks_up_each_patient_and_finds_what_the_join_finds(
    archive: Archive, match: dict[str, str]
) -> None:
    page = Query(Level.STUDY, match=match, limit=20, offset=5)
    keywords = query.returned_keywords(page)
    with archive.sessions() as session:
        joined = session.execute(query.build_statement(page, keywords)).all()
        if session.get_bind().dialect.name == "postgresql":
            looked_up = session.execute(query.build_statement(page, keywords, lateral=True))
            assert looked_up.all() == joined
    assert len(joined) == 20 and all(row[keywords.index("PatientID")] for row in joined)


def test_only_a_page_matching_nothing_of_the_patient_looks_patients_up() -> None:
    def sql(level: Level, match: dict[str, str], limit: int | None = 101) -> str:
        ask = Query(level, match=match, limit=limit)
        statement = query.build_statement(ask, query.returned_keywords(ask), lateral=True)
        return str(statement.compile(dialect=postgresql.dialect()))

    assert "JOIN LATERAL" in sql(Level.STUDY, {"StudyDate": "20260101-", "PatientName": ""})
    assert "JOIN LATERAL" not in sql(Level.STUDY, {"PatientID": "nguyen-1"})
    assert "JOIN LATERAL" not in sql(Level.STUDY, {"StudyDate": "20260101-"}, limit=None)
    assert "patients" not in sql(Level.SERIES, {"StudyInstanceUID": "1.2.3.4"})


def _asking(value: str) -> Query:
    return Query(Level.STUDY, match={"PatientName": value}, limit=101)
