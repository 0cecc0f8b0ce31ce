"""Small DICOM files for a subset of a seeded index, to load into both archives.

Orthanc cannot be seeded with a million rows through SQL, so both servers get
the same subset as real files: ``studies`` studies sampled from the seeded index,
up to ``series`` series each with ``per_series`` instances, every file carrying
the index's patient, study, series and instance attributes (names in ISO_IR 192,
UIDs as seeded) and an 8 x 8 pixel image, about 2 kB a file. Files go into
``shards`` folders so they can be pushed over parallel associations; a folder set
is complete when it holds a ``.complete`` marker.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

SUBSET_VERSION = 1
MARKER = ".complete"
PIXELS = 8

_STUDY_SQL = """
SELECT s.id, s.study_instance_uid, s.study_date, s.study_time, s.accession_number,
       s.study_id, s.study_description, s.referring_physician_name, s.institution_name,
       p.patient_name, p.patient_id, p.issuer, p.patient_birth_date, p.patient_sex
FROM studies s JOIN patients p ON p.id = s.patient_pk WHERE s.id = ?
"""
_SERIES_SQL = """
SELECT id, series_instance_uid, modality, series_number, series_description,
       body_part_examined, manufacturer
FROM series WHERE study_pk = ? ORDER BY series_number LIMIT ?
"""
_INSTANCE_SQL = """
SELECT sop_instance_uid, sop_class_uid, instance_number
FROM instances WHERE series_pk = ? ORDER BY instance_number LIMIT ?
"""
_STUDY_KEYS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "StudyDescription", "ReferringPhysicianName", "InstitutionName", "PatientName",
    "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
)  # fmt: skip
_SERIES_KEYS = (
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
    "BodyPartExamined", "Manufacturer",
)  # fmt: skip


@dataclass(frozen=True)
class Subset:
    """A generated subset on disk."""

    folder: Path
    shards: list[Path]
    files: int
    study_uids: list[str]


def ensure_subset(
    cache: Path, index: Path, studies: int, series: int, per_series: int, shards: int = 4
) -> Subset:
    """The cached subset of ``index`` with these sizes, generated when missing."""
    name = f"subset-v{SUBSET_VERSION}-{index.stem}-{studies}x{series}x{per_series}"
    folder = cache / name
    if not (folder / MARKER).exists():
        _generate(folder, index, studies, series, per_series, shards)
    shard_folders = sorted(p for p in folder.iterdir() if p.is_dir())
    uids = (folder / "studies.txt").read_text().split()
    files = sum(1 for shard in shard_folders for _ in shard.glob("*.dcm"))
    return Subset(folder, shard_folders, files, uids)


def _generate(
    folder: Path, index: Path, studies: int, series: int, per_series: int, shards: int
) -> None:
    print(f"writing a {studies:,}-study subset of {index.name} into {folder} ...", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    shard_folders = [folder / f"shard-{n}" for n in range(shards)]
    for shard in shard_folders:
        shard.mkdir(parents=True)
    uids: list[str] = []
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        count = conn.execute("SELECT max(id) FROM studies").fetchone()[0]
        chosen = sorted(random.Random(SUBSET_VERSION).sample(range(1, count + 1), studies))
        for number, study_pk in enumerate(chosen):
            out = shard_folders[number % shards]
            uids.append(_write_study(conn, out, study_pk, series, per_series))
    (folder / "studies.txt").write_text("\n".join(uids) + "\n")
    (folder / MARKER).write_text(f"{studies}\n")


def _write_study(
    conn: sqlite3.Connection, out: Path, study_pk: int, series: int, per_series: int
) -> str:
    study = conn.execute(_STUDY_SQL, (study_pk,)).fetchone()
    base = _base_dataset(dict(zip(_STUDY_KEYS, study[1:], strict=True)))
    for series_row in conn.execute(_SERIES_SQL, (study_pk, series)).fetchall():
        for key, value in zip(_SERIES_KEYS, series_row[1:], strict=True):
            setattr(base, key, value)
        base.SeriesDate = base.StudyDate
        for sop_uid, sop_class, number in conn.execute(
            _INSTANCE_SQL, (series_row[0], per_series)
        ).fetchall():
            _write_instance(base, out / f"{sop_uid}.dcm", sop_uid, sop_class, number)
    return str(study[1])


def _base_dataset(values: dict[str, object]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    for key, value in values.items():
        setattr(ds, key, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = PIXELS
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(i % 251 for i in range(PIXELS * PIXELS * 2))
    ds["PixelData"].VR = "OW"
    return ds


def _write_instance(ds: Dataset, path: Path, sop_uid: str, sop_class: str, number: int) -> None:
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = number
    ds.ContentDate = ds.StudyDate
    dcmwrite(path, ds, enforce_file_format=True)
