"""DICOMDIR for exported studies: a DICOM File-set (PS3.10 §8, PS3.3 F.5) made by
``pydicom.fileset.FileSet`` from the instances' headers.

The File-set is planned before any byte of the download is sent: each instance
goes into a ``FileSet`` (images described from the index, other instances by their
header, never their pixels), which names the files
(``PT000000/ST000000/SE000000/IM000000``, File IDs of at most 8 components of 8
characters, PS3.10 §8.2) and writes the DICOMDIR with its directory records. The
header copies it writes are thrown away; the archive then streams the stored files
under those names beside the DICOMDIR (:mod:`api.downloads`).

A DICOMDIR record needs some Type 1 attributes that real instances sometimes lack
or leave empty (Study ID, Series Number, Instance Number...). Those are given a
stand-in in the header copy only, so one sloppy instance does not stop a download;
the file itself goes out unchanged.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileInstance, FileSet, RecordNode

from storage.export import ExportedInstance
from storage.retrieve import StoredInstance

FILE_SET_ID = "PACS_EXPORT"  # CS, 16 characters at most
# Type 1 keys of the PATIENT / STUDY / SERIES / IMAGE records (PS3.3 F.5) and a stand-in.
_STAND_INS = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": 1,
}


class DicomdirError(ValueError):
    """An instance cannot be put in the File-set (unreadable header)."""


@dataclass(frozen=True)
class FileSetPlan:
    """The DICOMDIR's bytes and where each instance goes (SOP Instance UID -> path)."""

    dicomdir: bytes
    paths: dict[str, str]


def plan_file_set(
    instances: Iterable[ExportedInstance], open_file: Callable[[StoredInstance], BinaryIO]
) -> FileSetPlan:
    """A File-set of ``instances``, in the given order.

    An image is described from the index alone (its IMAGE record needs only the
    Instance Number); any other instance (documents, SR, presentation states...), or
    an image whose record needs more, is described from its header, read with
    ``open_file`` up to its pixel data.
    """
    file_set = _IndexedFileSet()
    file_set.ID = FILE_SET_ID
    for number, instance in enumerate(instances, start=1):
        if instance.stored.has_pixels:
            try:
                file_set.add(_stand_in(_described(instance), number))
                continue
            except ValueError:
                pass  # this SOP class's record needs attributes only the file has
        uid = instance.stored.sop_instance_uid
        try:
            with open_file(instance.stored) as fp:
                ds = dcmread(fp, stop_before_pixels=True)
        except (InvalidDicomError, ValueError) as exc:
            raise DicomdirError(f"cannot read the header of {uid}: {exc}") from exc
        file_set.add(_stand_in(ds, number))
    with tempfile.TemporaryDirectory(prefix="pacs-dicomdir-") as folder:
        root = Path(folder)
        file_set.write(root)
        paths = {
            instance.SOPInstanceUID: Path(instance.path).relative_to(root).as_posix()
            for instance in file_set
        }
        return FileSetPlan((root / "DICOMDIR").read_bytes(), paths)


def _described(instance: ExportedInstance) -> Dataset:
    """What the PATIENT, STUDY, SERIES and IMAGE records take from an image, from the
    index (which holds the file's values, decoded)."""
    stored = instance.stored
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = instance.patient_id
    ds.PatientName = instance.patient_name
    ds.StudyInstanceUID = stored.study_instance_uid
    ds.StudyDate = instance.study_date
    ds.StudyTime = instance.study_time
    ds.StudyDescription = instance.study_description
    ds.StudyID = instance.study_id
    ds.AccessionNumber = instance.accession_number
    ds.SeriesInstanceUID = stored.series_instance_uid
    ds.Modality = instance.modality
    if instance.series_number is not None:
        ds.SeriesNumber = instance.series_number
    if instance.instance_number is not None:
        ds.InstanceNumber = instance.instance_number
    ds.SOPClassUID = stored.sop_class_uid
    ds.SOPInstanceUID = stored.sop_instance_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = stored.transfer_syntax_uid
    return ds


class _IndexedFileSet(FileSet):
    """A FileSet whose :meth:`add` costs the same for the 1,000th instance as the first.

    pydicom's own ``add`` looks for the instance among all instances already added,
    and for each record among all its siblings, computing every key again: O(n^2),
    15 s for a 1,000-slice series on this kind of machine. This one does the same
    insertion with dictionaries of what it added, and stages an empty file instead of
    re-encoding each header. Only new, distinct instances are ever added here (a
    study's instances, each once), which is all it supports.
    """

    def __init__(self) -> None:
        super().__init__()
        self._added: set[str] = set()
        self._branches: dict[tuple[int, str], RecordNode] = {}

    def add(self, ds_or_path: Dataset | str | os.PathLike[str]) -> FileInstance:
        if not isinstance(ds_or_path, Dataset):
            raise TypeError("only datasets are added to this file-set")
        ds = ds_or_path
        uid = str(ds.SOPInstanceUID)
        if uid in self._added:
            raise DicomdirError(f"instance {uid} is in the study twice")
        # PATIENT, STUDY, SERIES records (PS3.3 F.5), then the instance's own record.
        *branches, leaf_record = list(self._recordify(ds))
        parent: RecordNode = self._tree
        for record in branches:
            node = RecordNode(record)
            key = (id(parent), node.key)
            known = self._branches.get(key)
            if known is None:
                node.parent = parent
                known = self._branches[key] = node
            parent = known
        leaf = RecordNode(leaf_record)
        leaf.parent = parent
        instance = FileInstance(leaf)
        leaf.instance = instance
        self._stage["+"][uid] = instance
        self._instances.append(instance)
        instance._apply_stage("+")
        # FileSet.write() copies the staged file to its File ID; the archive sends the
        # real file under that name, so an empty stand-in is all the stage needs.
        Path(instance.path).touch()
        self._added.add(uid)
        return instance


def _stand_in(ds: Dataset, number: int) -> Dataset:
    for keyword, value in _STAND_INS.items():
        if keyword not in ds or ds[keyword].VM == 0:
            setattr(ds, keyword, value)
    if "InstanceNumber" not in ds or ds["InstanceNumber"].VM == 0:
        ds.InstanceNumber = number
    if "PatientName" not in ds:
        ds.PatientName = ""
    return ds
