"""A seeded index for the DICOMweb benchmark: realistic names, dates and modality mixes.

The rows go through :func:`index_seed.seed` (bulk SQLAlchemy Core inserts into the
tables of :mod:`storage.models`), but with a profile QIDO queries can tell apart:

* patient names drawn from Vietnamese family names at their real frequencies
  (Nguyễn ~38 %, Trần, Lê, Phạm, Hoàng, Huỳnh, Phan, Vũ, Võ, Đặng, Bùi, Đỗ, Hồ,
  Ngô, Dương, Lý) with a middle and a given name; 70 % stored with their accents,
  20 % typed without them, 10 % in capitals, a few foreign names; each with
  ``patient_name_key = pacs.charset.search_key(name)``;
* study dates from 2015 to 2024, denser in recent years; accession numbers per site;
* CT, MR, CR, US and XA studies, one in eight with a second modality (CR scouts,
  MR + CT, XA + CR...), ModalitiesInStudy joined sorted as ingest keeps it;
* ``instances`` spread over exactly ``studies`` studies, CT and MR studies large,
  CR studies a couple of images, split into 1 to 12 series.

The template is built once per (studies, instances, schema) under the cache
folder (or as a PostgreSQL template database) and copied for every run.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from index_seed import (
    MODALITIES,
    SITES,
    Batch,
    IndexRows,
    PostgresDatabases,
    schema_fingerprint,
    seed,
)
from sqlalchemy import Engine

from pacs.charset import search_key
from storage.database import make_engine

QIDO_SEED_VERSION = 1
START = datetime(2015, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 1, tzinfo=UTC)

# Family names and their share of the Vietnamese population (rounded).
FAMILIES: dict[str, float] = {
    "Nguyễn": 38.4, "Trần": 12.1, "Lê": 9.5, "Phạm": 7.0, "Hoàng": 4.1, "Huỳnh": 1.0,
    "Phan": 4.5, "Vũ": 3.0, "Võ": 1.0, "Đặng": 2.1, "Bùi": 2.0, "Đỗ": 1.4, "Hồ": 1.3,
    "Ngô": 1.3, "Dương": 1.0, "Lý": 0.5,
}  # fmt: skip
MIDDLE = ("Văn", "Thị", "Đức", "Minh", "Ngọc", "Hữu", "Quốc", "Thanh", "Xuân", "Kim", "Thu")
GIVEN = (
    "An", "Bình", "Cường", "Dũng", "Hà", "Hải", "Hạnh", "Hoa", "Hùng", "Hương", "Khánh",
    "Lan", "Linh", "Long", "Mai", "Nam", "Nga", "Nghĩa", "Phúc", "Phương", "Quang", "Sơn",
    "Tâm", "Thảo", "Trang", "Tú", "Tuấn", "Vân", "Việt", "Yến", "Đức", "Bảo", "Ánh", "Huy",
)  # fmt: skip
FOREIGN = ("Smith^John", "Kim^Min-jun", "Dupont^Marie", "Somchai^Bounmy", "Li^Wei")

# modality -> (share of studies, relative study size, series count range, descriptions)
PROFILE: dict[str, tuple[float, float, tuple[int, int], tuple[str, ...]]] = {
    "CT": (0.30, 3.0, (2, 5), ("CT NGỰC CÓ TIÊM", "CT SỌ NÃO", "CT BỤNG CHẬU")),
    "MR": (0.20, 2.5, (4, 10), ("MRI SỌ NÃO", "MRI CỘT SỐNG THẮT LƯNG", "MRI GỐI")),
    "CR": (0.25, 0.05, (1, 3), ("X-QUANG NGỰC THẲNG", "X-QUANG CỘT SỐNG")),
    "US": (0.15, 0.4, (1, 2), ("SIÊU ÂM Ổ BỤNG", "SIÊU ÂM TIM")),
    "XA": (0.10, 1.0, (3, 12), ("DSA MẠCH VÀNH", "DSA MẠCH NÃO")),
}
SECOND = {"CT": "CR", "MR": "CT", "CR": "CT", "US": "CR", "XA": "CR"}
MIXED_SHARE = 0.125
SITE_CODES = {"BV-TINH-HAGIANG": "HG", "BV-TINH-CAOBANG": "CB", "BV-TINH-LAOCAI": "LC"}
SITE_CODES["BV-TINH-DIENBIEN"] = "DB"


def template(cache: Path, studies: int, instances: int) -> Path:
    """The seeded SQLite template for this profile, built on first use."""
    name = f"qido-v{QIDO_SEED_VERSION}-{schema_fingerprint()}-{studies}-{instances}.sqlite"
    path = cache / name
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    for leftover in cache.glob(f"{partial.name}*"):
        leftover.unlink()
    engine = make_engine(f"sqlite:///{partial}")
    try:
        rows = QidoRows(random.Random(QIDO_SEED_VERSION), studies, instances)
        seed(engine, instances, rows)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
    finally:
        engine.dispose()
    partial.rename(path)
    return path


def postgres_template(studies: int, instances: int) -> str:
    """The same profile as :func:`template` as a PostgreSQL template database (its name)."""
    name = f"pacs_bench_qido_v{QIDO_SEED_VERSION}_{schema_fingerprint()}_{studies}_{instances}"

    def fill(engine: Engine) -> None:
        seed(engine, instances, QidoRows(random.Random(QIDO_SEED_VERSION), studies, instances))

    return PostgresDatabases().build(name, fill)


def study_uids(index: Path, count: int, rng: random.Random) -> list[str]:
    """``count`` random Study Instance UIDs of the index (repeats allowed)."""
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        uids = [row[0] for row in conn.execute("SELECT study_instance_uid FROM studies")]
    return [rng.choice(uids) for _ in range(count)]


class QidoRows(IndexRows):
    """Index rows with the QIDO profile (see the module docstring)."""

    def __init__(self, rng: random.Random, studies: int, instances: int) -> None:
        super().__init__(rng, instances)
        self.studies = studies
        self.patient_count = max(1, studies * 7 // 10)
        self.plans = self._plan(studies, instances)
        self.span = int((END - START).total_seconds())

    def _plan(self, studies: int, instances: int) -> list[tuple[list[str], int]]:
        """Each study's modalities and instance count; the counts sum to ``instances``."""
        names = list(PROFILE)
        shares = [PROFILE[m][0] for m in names]
        plans: list[tuple[list[str], float]] = []
        for _ in range(studies):
            modalities = [self.rng.choices(names, shares)[0]]
            if self.rng.random() < MIXED_SHARE:
                modalities.append(SECOND[modalities[0]])
            weight = sum(PROFILE[m][1] for m in modalities) * self.rng.uniform(0.5, 1.5)
            plans.append((modalities, weight))
        total = sum(w for _, w in plans)
        sizes = [max(1, int(instances * w / total)) for _, w in plans]
        for index in range(instances - sum(sizes)):
            sizes[index % studies] += 1
        while sum(sizes) > instances:  # only when instances < studies
            biggest = max(range(studies), key=sizes.__getitem__)
            sizes[biggest] -= 1
        return [(mods, size) for (mods, _), size in zip(plans, sizes, strict=True)]

    def _patient(self, pk: int) -> dict[str, Any]:
        row = super()._patient(pk)
        name = self._person_name()
        row.update(patient_name=name, patient_name_key=search_key(name))
        return row

    def _person_name(self) -> str:
        rng = self.rng
        if rng.random() < 0.01:
            return rng.choice(FOREIGN)
        family = rng.choices(list(FAMILIES), list(FAMILIES.values()))[0]
        name = f"{family}^{rng.choice(MIDDLE)} {rng.choice(GIVEN)}"
        style = rng.random()
        if style < 0.2:
            return search_key(name).title()  # typed without accents
        if style < 0.3:
            return search_key(name).upper()
        return name

    def _study(self, batch: Batch, pk: int) -> None:
        modalities, size = self.plans[pk - 1]
        when = START + timedelta(seconds=int(self.span * self.rng.random() ** 0.7))
        site = SITES[pk % len(SITES)]
        doctor = self._person_name()
        primary = modalities[0]
        sop_classes = sorted({MODALITIES[m][0] for m in modalities})
        series = self._split(modalities, size)
        batch.studies.append(
            {
                "id": pk,
                "patient_pk": self.rng.randint(1, self.patient_count),
                "study_instance_uid": self.uid(),
                "study_date": when.strftime("%Y%m%d"),
                "study_time": when.strftime("%H%M%S"),
                "accession_number": f"{SITE_CODES[site]}{when:%y}{pk:07d}",
                "issuer_of_accession_number": site,
                "study_id": str(pk % 100000),
                "study_description": self.rng.choice(PROFILE[primary][3]),
                "referring_physician_name": doctor,
                "referring_physician_name_key": search_key(doctor),
                "timezone_offset_from_utc": "+0700",
                "patient_age": f"{self.rng.randint(1, 95):03d}Y",
                "patient_size": "1.62",
                "patient_weight": str(self.rng.randint(35, 90)),
                "institution_name": f"Bệnh viện {site}",
                "modalities_in_study": "\\".join(sorted(set(modalities))),
                "sop_classes_in_study": "\\".join(sop_classes),
                "number_of_series": len(series),
                "number_of_instances": size,
                "source_ae": f"{primary}01",
                "source_site": site,
                "created_at": when,
                "updated_at": when,
            }
        )
        for number, (modality, count) in enumerate(series, start=1):
            self._series(batch, pk, modality, number, count, when)

    def _split(self, modalities: list[str], size: int) -> list[tuple[str, int]]:
        """The study's series as (modality, instances), at least one instance each."""
        kinds: list[str] = []
        for modality in modalities:
            low, high = PROFILE[modality][2]
            kinds += [modality] * self.rng.randint(low, high)
        kinds = kinds[: max(1, size)]
        weights = [self.rng.uniform(0.2, 1.0) for _ in kinds]
        counts = [1 + int((size - len(kinds)) * w / sum(weights)) for w in weights]
        counts[0] += size - sum(counts)
        return list(zip(kinds, counts, strict=True))
