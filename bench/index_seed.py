"""Fresh and pre-filled index databases for benchmark runs.

A seeded index holds ``instances`` rows in about ``instances / 100`` studies
(CT, MR, CR, XA and US studies of 1 to 10 series, ~7 studies per 10 patients),
inserted in bulk with SQLAlchemy Core straight into the tables of
:mod:`storage.models`, with realistic UIDs, names, dates and blob columns. It is
built once into a template (a SQLite file under the cache folder, or a PostgreSQL
database) and copied for every run, so repeated runs do not reseed.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from pacs.charset import name_words, search_key
from storage.blobs import blob_key
from storage.database import MIGRATIONS, make_engine, upgrade
from storage.models import Instance, Patient, PatientNameWord, Series, Study

SEED_VERSION = 1
INSTANCES_PER_STUDY = 100
STUDIES_PER_BATCH = 200
UID_ROOT = "1.2.826.0.1.3680043.8.498."
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

# modality -> (SOP Class UID, rows, bits, frames, series sizes summing to INSTANCES_PER_STUDY)
MODALITIES: dict[str, tuple[str, int, int, int | None, tuple[int, ...]]] = {
    "CT": ("1.2.840.10008.5.1.4.1.1.2", 512, 16, None, (2, 60, 38)),
    "MR": ("1.2.840.10008.5.1.4.1.1.4", 256, 16, None, (20, 20, 20, 20, 20)),
    "CR": ("1.2.840.10008.5.1.4.1.1.1", 2048, 16, None, (50, 50)),
    "XA": ("1.2.840.10008.5.1.4.1.1.12.1", 1024, 8, 30, (10,) * 10),
    "US": ("1.2.840.10008.5.1.4.1.1.6.1", 600, 8, None, (100,)),
}
FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng")
GIVEN = ("Văn An", "Thị Hoa", "Minh Đức", "Thu Hà", "Quốc Bảo", "Ngọc Lan", "Hữu Nghĩa")
SITES = ("BV-TINH-HAGIANG", "BV-TINH-CAOBANG", "BV-TINH-LAOCAI", "BV-TINH-DIENBIEN")


def schema_fingerprint() -> str:
    """A hash of the migration scripts: a seeded template is only reused for the same ones."""
    digest = hashlib.sha256()
    for script in sorted((MIGRATIONS / "versions").glob("*.py")):
        digest.update(script.name.encode() + b"\0" + script.read_bytes())
    return digest.hexdigest()[:12]


def upgrade_copy(url: str) -> None:
    """Bring a copied template to the newest schema (migrations added since seeding)."""
    engine = make_engine(url) if url.startswith("sqlite") else _pg_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


class IndexDatabases(Protocol):
    """Where run indexes live: fresh ones per run, seeded ones copied from a template."""

    def template(self, instances: int) -> str:
        """Name of a template holding ``instances`` seeded rows (built when missing)."""
        ...

    def create(self, run: str, data_dir: Path, template: str | None) -> str:
        """A database for one run (empty, or a copy of ``template``); returns its URL."""
        ...

    def drop(self, url: str) -> None: ...


class SqliteDatabases:
    """SQLite files: templates in the cache folder, run copies in the run's data folder."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def template(self, instances: int) -> str:
        path = self.cache / f"seed-v{SEED_VERSION}-{schema_fingerprint()}-{instances}.sqlite"
        if not path.exists():
            partial = path.with_suffix(".partial")
            for leftover in self.cache.glob(f"{partial.name}*"):
                leftover.unlink()
            engine = make_engine(f"sqlite:///{partial}")
            seed(engine, instances)
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
            engine.dispose()
            partial.rename(path)
        return str(path)

    def create(self, run: str, data_dir: Path, template: str | None) -> str:
        target = data_dir / "index.sqlite"
        data_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{target}"
        if template:
            shutil.copyfile(template, target)
            upgrade_copy(url)
        return url

    def drop(self, url: str) -> None:
        """The file goes with the run's data folder."""


class PostgresDatabases:
    """PostgreSQL databases on the local server (trust auth), copied with TEMPLATE."""

    def template(self, instances: int) -> str:
        name = f"pacs_bench_seed_v{SEED_VERSION}_{schema_fingerprint()}_{instances}"
        return self.build(name, lambda engine: seed(engine, instances))

    def build(self, name: str, fill: Callable[[Engine], None]) -> str:
        """The template database ``name``, filled by ``fill`` the first time."""
        if not self._exists(name):
            partial = f"{name}_partial"
            self._admin(f'DROP DATABASE IF EXISTS "{partial}"')
            self._admin(f'CREATE DATABASE "{partial}"')
            engine = make_engine(PG_URL.format(name=partial))
            fill(engine)
            engine.dispose()
            self._admin(f'ALTER DATABASE "{partial}" RENAME TO "{name}"')
        return name

    def create(self, run: str, data_dir: Path, template: str | None) -> str:
        name = f"pacs_bench_{run}".lower().replace("-", "_")
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template or "template0"}"')
        url = PG_URL.format(name=name)
        if template:
            upgrade_copy(url)
        return url

    def drop(self, url: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def _exists(self, name: str) -> bool:
        with psycopg.connect(PG_ADMIN) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return row.fetchone() is not None

    @staticmethod
    def _admin(statement: str) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(statement.encode())


def count_instances(url: str) -> int:
    """Rows in the instances table of the index at ``url``."""
    engine = make_engine(url) if url.startswith("sqlite") else _pg_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Instance)) or 0)
    finally:
        engine.dispose()


def _pg_engine(url: str) -> Engine:
    from sqlalchemy import create_engine

    return create_engine(url, poolclass=NullPool)


def seed(engine: Engine, instances: int, rows: IndexRows | None = None) -> None:
    """Create the schema and bulk-insert ``instances`` instance rows with their parents.

    ``rows`` generates them (another benchmark's profile); by default :class:`IndexRows`.
    """
    print(f"seeding an index with {instances:,} instances ...", flush=True)
    upgrade(engine)
    rows = rows or IndexRows(random.Random(SEED_VERSION), instances)
    with engine.begin() as conn:
        patients = rows.patients()
        conn.execute(insert(Patient), patients)
        words = [
            {"word": word, "patient_pk": p["id"]}
            for p in patients
            for word in name_words(p["patient_name_key"])
        ]
        conn.execute(insert(PatientNameWord), words)
    for batch in rows.batches():
        with engine.begin() as conn:
            conn.execute(insert(Study), batch.studies)
            conn.execute(insert(Series), batch.series)
            conn.execute(insert(Instance), batch.instances)
    if engine.dialect.name == "postgresql":
        _fix_sequences(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def _fix_sequences(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in ("patients", "studies", "series", "instances"):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            )


@dataclass
class Batch:
    studies: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)


class IndexRows:
    """Generates consistent patient / study / series / instance rows."""

    def __init__(self, rng: random.Random, instances: int) -> None:
        self.rng = rng
        self.total = instances
        self.studies = max(1, -(-instances // INSTANCES_PER_STUDY))
        self.patient_count = max(1, self.studies * 7 // 10)
        self.series_pk = 0
        self.instance_pk = 0
        self.epoch = datetime(2015, 1, 1, tzinfo=UTC)

    def uid(self) -> str:
        return f"{UID_ROOT}{self.rng.getrandbits(100)}"

    def patients(self) -> list[dict[str, Any]]:
        return [self._patient(pk) for pk in range(1, self.patient_count + 1)]

    def _patient(self, pk: int) -> dict[str, Any]:
        rng = self.rng
        name = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"
        birth = f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        return {
            "id": pk,
            "issuer": SITES[pk % len(SITES)],
            "patient_id": f"P{pk:09d}",
            "patient_name": name,
            "patient_name_key": search_key(name),
            "patient_birth_date": birth,
            "patient_birth_time": "",
            "patient_sex": rng.choice("MF"),
            "other_patient_ids": "",
            "ethnic_group": "",
            "patient_comments": "",
        }

    def batches(self) -> Iterator[Batch]:
        batch = Batch()
        for study_pk in range(1, self.studies + 1):
            self._study(batch, study_pk)
            if study_pk % STUDIES_PER_BATCH == 0:
                yield batch
                batch = Batch()
        if batch.studies:
            yield batch

    def _study(self, batch: Batch, pk: int) -> None:
        modality = self.rng.choice(tuple(MODALITIES))
        sizes = self._series_sizes(modality)
        when = self.epoch + timedelta(seconds=self.rng.randrange(10 * 365 * 86400))
        site = SITES[pk % len(SITES)]
        doctor = f"{self.rng.choice(FAMILY)}^{self.rng.choice(GIVEN)}"
        batch.studies.append(
            {
                "id": pk,
                "patient_pk": self.rng.randint(1, self.patient_count),
                "study_instance_uid": self.uid(),
                "study_date": when.strftime("%Y%m%d"),
                "study_time": when.strftime("%H%M%S"),
                "accession_number": f"A{pk:010d}",
                "issuer_of_accession_number": site,
                "study_id": str(pk % 100000),
                "study_description": f"{modality} study {pk % 37}",
                "referring_physician_name": doctor,
                "referring_physician_name_key": search_key(doctor),
                "timezone_offset_from_utc": "+0700",
                "patient_age": f"{self.rng.randint(1, 95):03d}Y",
                "patient_size": "1.62",
                "patient_weight": str(self.rng.randint(35, 90)),
                "institution_name": f"Bệnh viện {site}",
                "modalities_in_study": modality,
                "sop_classes_in_study": MODALITIES[modality][0],
                "number_of_series": len(sizes),
                "number_of_instances": sum(sizes),
                "source_ae": f"{modality}01",
                "source_site": site,
                "created_at": when,
                "updated_at": when,
            }
        )
        for number, size in enumerate(sizes, start=1):
            self._series(batch, pk, modality, number, size, when)

    def _series_sizes(self, modality: str) -> list[int]:
        left = self.total - self.instance_pk
        sizes: list[int] = []
        for size in MODALITIES[modality][4]:
            take = min(size, left - sum(sizes))
            if take > 0:
                sizes.append(take)
        return sizes or [1]

    def _series(
        self, batch: Batch, study_pk: int, modality: str, number: int, size: int, when: datetime
    ) -> None:
        self.series_pk += 1
        batch.series.append(
            {
                "id": self.series_pk,
                "study_pk": study_pk,
                "series_instance_uid": self.uid(),
                "modality": modality,
                "series_number": number,
                "series_description": f"{modality} series {number}",
                "series_date": when.strftime("%Y%m%d"),
                "series_time": when.strftime("%H%M%S"),
                "body_part_examined": self.rng.choice(("CHEST", "HEAD", "ABDOMEN", "HEART")),
                "laterality": "",
                "protocol_name": f"{modality} protocol {number}",
                "station_name": f"{modality}-ST01",
                "institution_name": "Bệnh viện tỉnh",
                "manufacturer": self.rng.choice(("GE MEDICAL SYSTEMS", "SIEMENS", "Philips")),
                "performed_procedure_step_start_date": when.strftime("%Y%m%d"),
                "performed_procedure_step_start_time": when.strftime("%H%M%S"),
                "scheduled_procedure_step_id": f"SPS{study_pk}",
                "requested_procedure_id": f"RP{study_pk}",
                "timezone_offset_from_utc": "+0700",
                "number_of_instances": size,
                "updated_at": when,
            }
        )
        for number_in_series in range(1, size + 1):
            batch.instances.append(self._instance(modality, number_in_series, when))

    def _instance(self, modality: str, number: int, when: datetime) -> dict[str, Any]:
        sop_class, rows, bits, frames, _ = MODALITIES[modality]
        self.instance_pk += 1
        uid = self.uid()
        return {
            "id": self.instance_pk,
            "series_pk": self.series_pk,
            "sop_instance_uid": uid,
            "sop_class_uid": sop_class,
            "instance_number": number,
            "content_date": when.strftime("%Y%m%d"),
            "content_time": when.strftime("%H%M%S"),
            "rows": rows,
            "columns": rows,
            "bits_allocated": bits,
            "number_of_frames": frames,
            "photometric_interpretation": "MONOCHROME2",
            "slice_location": -1.25 * number,
            "specific_character_set": "ISO_IR 192",
            "blob_key": blob_key(uid),
            "file_size": rows * rows * bits // 8 * (frames or 1) + 1800,
            "sha256": hashlib.sha256(uid.encode()).hexdigest(),
            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
            "source_ae": f"{modality}01",
            "received_at": when,
        }
