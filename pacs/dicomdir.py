"""DICOMDIR for exported studies: a DICOM File-set (PS3.10 §8, PS3.3 F.5) written as
the last member of the download, so the instances stream from the first byte.

:class:`FileSetPlan` places each instance as it is given (viewing order): it names
its file (``PT000000/ST000000/SE000000/IM000000``, File IDs of at most 8
components of 8 characters, PS3.10 §8.2, numbered like ``pydicom.fileset``) and
keeps its directory records, already encoded (about 200 bytes each). Images are
described from the index; the PATIENT, STUDY and SERIES records (and the leaf
record type of a SOP Class) come from pydicom's record definitions once per
series, each further image only adds its small IMAGE record, encoded directly
(byte for byte what pydicom writes, and a thousand times cheaper than building
its dataset). Other instances (documents, SR, presentation states...) are
described from their header, never their pixels. :meth:`FileSetPlan.dicomdir`
then encodes the DICOMDIR (PS3.3 F.3: Explicit VR Little Endian, each record's
offsets counted from the first byte of the file) in one pass over the records.

A DICOMDIR record needs some Type 1 attributes that real instances sometimes lack
or leave empty (Study ID, Series Number, Instance Number...). Those are given a
stand-in in the record only, so one sloppy instance does not stop a download; the
file itself goes out unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import _PREFIXES, FileSet
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

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
_CHARSET = "ISO_IR 192"  # the index holds decoded text; records carry it as UTF-8
_ITEM = struct.Struct("<HHI")  # (FFFE,E000) Item tag and its length
_SHORT = struct.Struct("<HH2sH")  # tag, VR and 16-bit length of a short-form element
# The three elements every record starts with (PS3.3 F.3.2.2): Offset of the Next
# Directory Record (UL), Record In-use Flag (US, FFFFH), Offset of Referenced
# Lower-Level Directory Entity (UL); explicit VR, so they encode in 30 bytes.
_OFFSETS = struct.Struct("<HH2sHI HH2sHH HH2sHI")
_SEQUENCE_START = struct.Struct("<HH2sHI").pack(0x0004, 0x1220, b"SQ", 0, 0xFFFFFFFF)
_SEQUENCE_END = struct.Struct("<HHI").pack(0xFFFE, 0xE0DD, 0)
_RECORDER = FileSet()  # only its record definitions are used (they keep no state)


class DicomdirError(ValueError):
    """An instance cannot be put in the File-set (unreadable header, duplicate)."""


@dataclass
class _Node:
    """A directory record (encoded from its Directory Record Type on), its File ID
    components and its lower-level records."""

    body: bytes
    file_id: tuple[str, ...] = ()
    children: list[_Node] = field(default_factory=list)
    by_key: dict[str, _Node] = field(default_factory=dict)

    def child(self, key: str, record: Dataset) -> _Node:
        """The lower-level PATIENT, STUDY or SERIES record with ``key``, added if new."""
        if (found := self.by_key.get(key)) is None:
            found = self.by_key[key] = self.add(
                record.DirectoryRecordType, partial(_encode, record)
            )
        return found

    def add(self, record_type: str, encode: Callable[[tuple[str, ...]], bytes]) -> _Node:
        """A new lower-level record, named after its type and place (PS3.10 §8.2) and
        encoded by ``encode`` from its File ID."""
        prefix = _PREFIXES[record_type]
        file_id = (*self.file_id, f"{prefix}{len(self.children):0{8 - len(prefix)}d}")
        node = _Node(encode(file_id), file_id)
        self.children.append(node)
        return node


class FileSetPlan:
    """Where each instance goes in the File-set, and the DICOMDIR describing them."""

    def __init__(self) -> None:
        self._root = _Node(b"")
        self._uids: set[str] = set()
        # (series, SOP Class) -> its SERIES record, once its images are known to be IMAGEs
        self._image_series: dict[tuple[str, str], _Node] = {}

    def place(
        self, instance: ExportedInstance, open_file: Callable[[StoredInstance], BinaryIO]
    ) -> str:
        """Add ``instance`` (its header read with ``open_file`` unless the index
        describes it) and return its File ID as a relative POSIX path."""
        stored = instance.stored
        uid = stored.sop_instance_uid
        if uid in self._uids:
            raise DicomdirError(f"instance {uid} is in the study twice")
        self._uids.add(uid)
        number = len(self._uids)
        records = None
        series_key = (stored.series_instance_uid, stored.sop_class_uid)
        if stored.has_pixels and series_key not in self._image_series:
            records = _index_records(instance, number)
            if records is not None and records[-1].DirectoryRecordType == "IMAGE":
                self._image_series[series_key] = self._branch(records[:-1])
        if stored.has_pixels and (series := self._image_series.get(series_key)) is not None:
            # The same SOP Class in the same series: the same record types, so from
            # now on only the small IMAGE record is made, without pydicom datasets.
            leaf = series.add("IMAGE", partial(_image_record, instance, number))
        else:
            if records is None:
                records = _header_records(instance, number, open_file)
            *branches, record = records
            leaf = self._branch(branches).add(
                record.DirectoryRecordType, partial(_leaf_record, record)
            )
        return "/".join(leaf.file_id)

    def _branch(self, records: list[Dataset]) -> _Node:
        """The node of the last of these PATIENT, STUDY and SERIES records (none for
        a single-level record, PS3.3 F.4), each added unless already there."""
        node = self._root
        keys = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
        for record, key in zip(records, keys, strict=False):
            node = node.child(str(record.get(key, "")), record)
        return node

    def dicomdir(self) -> bytes:
        """The DICOMDIR file of every instance placed (PS3.10 §8, PS3.3 F.3)."""
        nodes = list(_depth_first(self._root))
        following = {
            id(node): after
            for parent in (self._root, *nodes)
            for node, after in zip(parent.children, parent.children[1:], strict=False)
        }
        # Every record's place in the file is known before any is written: the
        # head's size does not depend on the offsets it holds.
        offsets: dict[int, int] = {}
        position = len(self._head(0, 0)) + len(_SEQUENCE_START)
        for node in nodes:
            offsets[id(node)] = position
            position += _ITEM.size + _OFFSETS.size + len(node.body)
        roots = self._root.children
        out = [self._head(offsets[id(roots[0])], offsets[id(roots[-1])]), _SEQUENCE_START]
        for node in nodes:
            after = following.get(id(node))
            lower = node.children[0] if node.children else None
            out.append(_ITEM.pack(0xFFFE, 0xE000, _OFFSETS.size + len(node.body)))
            out.append(
                _OFFSETS.pack(
                    *(0x0004, 0x1400, b"UL", 4, offsets[id(after)] if after else 0),
                    *(0x0004, 0x1410, b"US", 2, 0xFFFF),
                    *(0x0004, 0x1420, b"UL", 4, offsets[id(lower)] if lower else 0),
                )
            )
            out.append(node.body)
        out.append(_SEQUENCE_END)
        return b"".join(out)

    def _head(self, first: int, last: int) -> bytes:
        """Preamble, File Meta Information and the File-set elements before the
        Directory Record Sequence, pointing at the first and last root records."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        # The same study gives the same DICOMDIR, byte for byte.
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=sorted(self._uids))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.FileSetID = FILE_SET_ID
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last
        ds.FileSetConsistencyFlag = 0
        fp = _buffer()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        write_dataset(fp, ds)
        return fp.getvalue()


def plan_file_set(
    instances: Iterable[ExportedInstance], open_file: Callable[[StoredInstance], BinaryIO]
) -> tuple[FileSetPlan, dict[str, str]]:
    """A File-set of ``instances`` in the given order, and each one's File ID
    (SOP Instance UID -> relative path)."""
    plan = FileSetPlan()
    paths = {i.stored.sop_instance_uid: plan.place(i, open_file) for i in instances}
    return plan, paths


def _depth_first(node: _Node) -> Iterator[_Node]:
    """The records below ``node`` in the order the DICOMDIR lists them."""
    for child in node.children:
        yield child
        yield from _depth_first(child)


def _buffer() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    return fp


def _index_records(instance: ExportedInstance, number: int) -> list[Dataset] | None:
    """An image's records, highest level first, by pydicom's definitions, from the
    index; None if its SOP Class's record needs attributes only the file has."""
    try:
        return list(_RECORDER._recordify(_stand_in(_described(instance), number)))
    except ValueError:
        return None


def _header_records(
    instance: ExportedInstance, number: int, open_file: Callable[[StoredInstance], BinaryIO]
) -> list[Dataset]:
    """The instance's records, highest level first, by pydicom's definitions, from
    its header (read up to the pixel data)."""
    uid = instance.stored.sop_instance_uid
    try:
        with open_file(instance.stored) as fp:
            header = dcmread(fp, stop_before_pixels=True)
        return list(_RECORDER._recordify(_stand_in(header, number)))
    except (InvalidDicomError, ValueError) as exc:
        raise DicomdirError(f"cannot describe {uid} from its header: {exc}") from exc


def _encode(record: Dataset, _: tuple[str, ...] = ()) -> bytes:
    """The record from its Directory Record Type on: the offsets before it are
    written with the whole DICOMDIR."""
    fp = _buffer()
    write_dataset(fp, record[0x00041430:])
    return fp.getvalue()


def _leaf_record(record: Dataset, file_id: tuple[str, ...]) -> bytes:
    record.ReferencedFileID = list(file_id)
    return _encode(record)


def _image_record(instance: ExportedInstance, number: int, file_id: tuple[str, ...]) -> bytes:
    """The IMAGE record (PS3.3 F.5.9) of an image, as :func:`_encode` gives it: its
    values are all ASCII (CS, UI, IS), each element short-form Explicit VR Little
    Endian (PS3.5 §7.1.2), in tag order."""
    stored = instance.stored
    instance_number = number if instance.instance_number is None else instance.instance_number
    return b"".join(
        (
            _element(0x0004, 0x1430, b"CS", "IMAGE"),
            _element(0x0004, 0x1500, b"CS", "\\".join(file_id)),
            _element(0x0004, 0x1510, b"UI", stored.sop_class_uid),
            _element(0x0004, 0x1511, b"UI", stored.sop_instance_uid),
            _element(0x0004, 0x1512, b"UI", stored.transfer_syntax_uid),
            _element(0x0020, 0x0013, b"IS", str(instance_number)),
        )
    )


def _element(group: int, element: int, vr: bytes, value: str) -> bytes:
    """One element, padded to an even length (UI with NUL, text with a space)."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == b"UI" else b" "
    return _SHORT.pack(group, element, vr, len(data)) + data


def _described(instance: ExportedInstance) -> Dataset:
    """What the PATIENT, STUDY, SERIES and IMAGE records take from an image, from the
    index (which holds the file's values, decoded)."""
    stored = instance.stored
    ds = Dataset()
    ds.SpecificCharacterSet = _CHARSET
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


def _stand_in(ds: Dataset, number: int) -> Dataset:
    for keyword, value in _STAND_INS.items():
        if keyword not in ds or ds[keyword].VM == 0:
            setattr(ds, keyword, value)
    if "InstanceNumber" not in ds or ds["InstanceNumber"].VM == 0:
        ds.InstanceNumber = number
    if "PatientName" not in ds:
        ds.PatientName = ""
    return ds
