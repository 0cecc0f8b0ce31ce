"""Reading what the index needs from a DICOM file without touching its pixels.

:func:`read_header` parses everything up to Pixel Data (with
:mod:`storage.quick_header` when the file is little endian, else pydicom), then
walks the element headers that follow (pixel fragments included) by seeking, to
prove the file is complete without reading or decoding the pixel bytes. A truncated file, a file
that is not DICOM, or one whose UIDs are missing or malformed raises
:class:`InvalidInstance` with a reason fit for an ErrorComment.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from storage.attributes import IndexRecord, extract, extract_raw
from storage.quick_header import QuickHeader, read_quick

UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_REQUIRED_TAGS = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in REQUIRED_UIDS}

_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"}
_LONG_VRS |= {b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF


class InvalidInstance(ValueError):
    """The bytes are not a complete, well-identified DICOM instance."""


class MismatchedInstance(InvalidInstance):
    """The dataset contradicts what the sender announced (PS3.4 status 0xA900)."""


@dataclass(frozen=True)
class Header:
    """What the index keeps of a file, and the file's syntax and size."""

    record: IndexRecord
    transfer_syntax_uid: UID
    file_size: int

    @property
    def sop_instance_uid(self) -> str:
        return str(self.record.instance["sop_instance_uid"])


def is_valid_uid(value: object) -> bool:
    """PS3.5 §9.1: digits and dots, at most 64 characters, no empty component."""
    return isinstance(value, str) and len(value) <= 64 and UID_PATTERN.fullmatch(value) is not None


def read_header(path: Path, *, quick: bool = True) -> Header:
    """Read and check the header of the DICOM file at ``path``; ``quick=False``
    reads it with pydicom even when :mod:`storage.quick_header` could."""
    size = path.stat().st_size
    with path.open("rb") as fp:
        found = read_quick(fp, size) if quick else None
        if found is not None:
            return _checked_quick(fp, found, size)
        fp.seek(0)
        try:
            ds = dcmread(fp, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, struct.error, ValueError, TypeError) as exc:
            raise InvalidInstance(f"not a readable DICOM file: {exc}") from exc
        except Exception as exc:  # pydicom raises many types on garbage input
            raise InvalidInstance(f"not a readable DICOM file: {type(exc).__name__}") from exc
        try:
            return _checked_pydicom(fp, ds, size)
        except InvalidInstance:
            raise
        except Exception as exc:  # pydicom converts values lazily, raising many types
            raise InvalidInstance(f"unreadable header value: {exc}") from exc


def _checked_pydicom(fp: BinaryIO, ds: FileDataset, size: int) -> Header:
    syntax = _transfer_syntax(ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None)
    if syntax != DeflatedExplicitVRLittleEndian:
        _walk_rest(fp, size, syntax.is_little_endian, syntax.is_implicit_VR)
    _check_identity(ds)
    meta_uid = ds.file_meta.get("MediaStorageSOPInstanceUID")
    _check_announced_in_meta(str(meta_uid) if meta_uid else "", str(ds.SOPInstanceUID))
    return Header(extract(ds), syntax, size)


def _checked_quick(fp: BinaryIO, found: QuickHeader, size: int) -> Header:
    syntax = _transfer_syntax(found.transfer_syntax)
    fp.seek(found.data_end)
    _walk_rest(fp, size, little=True, implicit=syntax.is_implicit_VR)
    values = found.dataset.values
    for keyword in REQUIRED_UIDS:
        raw = values.get(_REQUIRED_TAGS[keyword])
        value = raw[1].decode("ascii", "replace").replace("\x00", "").strip() if raw else ""
        if not value:
            raise InvalidInstance(f"missing {keyword}")
        if not is_valid_uid(value):
            raise InvalidInstance(f"malformed {keyword} {value[:80]!r}")
    record = extract_raw(found.dataset)
    meta_uid = found.meta.values.get(0x00020003)
    announced = meta_uid[1].decode("ascii", "replace").strip("\x00 ") if meta_uid else ""
    _check_announced_in_meta(announced, str(record.instance["sop_instance_uid"]))
    return Header(record, syntax, size)


def _transfer_syntax(syntax: object) -> UID:
    if not syntax or not is_valid_uid(str(syntax)):
        raise InvalidInstance("missing or malformed Transfer Syntax UID in file meta")
    syntax = UID(str(syntax))
    if not syntax.is_transfer_syntax:
        raise InvalidInstance(f"unsupported transfer syntax {syntax}")
    return syntax


def _check_identity(ds: FileDataset) -> None:
    for keyword in REQUIRED_UIDS:
        try:
            value = ds.get(keyword)
        except Exception as exc:
            raise InvalidInstance(f"{keyword} cannot be decoded: {exc}") from exc
        if value is None or str(value) == "":
            raise InvalidInstance(f"missing {keyword}")
        if not is_valid_uid(str(value)):
            raise InvalidInstance(f"malformed {keyword} {str(value)[:80]!r}")


def _check_announced_in_meta(meta_uid: str, sop_instance_uid: str) -> None:
    if meta_uid and meta_uid != sop_instance_uid:
        raise MismatchedInstance(
            f"SOPInstanceUID {sop_instance_uid} differs from the announced {meta_uid}"
        )


def _walk_rest(fp: BinaryIO, size: int, little: bool, implicit: bool) -> None:
    """Seek over every element after the header; raise if the file ends early."""
    reader = _ElementWalker(fp, size, "<" if little else ">", implicit)
    reader.walk_elements(stop_at=None)


class _ElementWalker:
    def __init__(self, fp: BinaryIO, size: int, endian: str, implicit: bool) -> None:
        self.fp, self.size, self.endian, self.implicit = fp, size, endian, implicit

    def walk_elements(self, stop_at: int | None) -> None:
        """Walk elements until EOF (top level) or until the ``stop_at`` delimiter tag."""
        while True:
            head = self.fp.read(8)
            if not head and stop_at is None:
                return
            tag, length = self._element_header(head)
            if tag == stop_at:
                return
            if tag in (_ITEM_END, _SEQ_END):
                raise InvalidInstance(f"unexpected delimiter at byte {self.fp.tell() - 8}")
            if length == _UNDEFINED:
                self.walk_items()
            else:
                self._skip(length, tag)

    def walk_items(self) -> None:
        """Walk sequence items (or pixel fragments) up to the Sequence Delimiter."""
        while True:
            tag, length = self._item_header(self.fp.read(8))
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise InvalidInstance(f"expected an item tag at byte {self.fp.tell() - 8}")
            if length == _UNDEFINED:
                self.walk_elements(stop_at=_ITEM_END)
            else:
                self._skip(length, tag)

    def _element_header(self, head: bytes) -> tuple[int, int]:
        tag = self._tag(head)
        if self.implicit or (tag >> 16) == 0xFFFE:
            return tag, struct.unpack(self.endian + "L", head[4:8])[0]
        if head[4:6] in _LONG_VRS:
            extra = self.fp.read(4)
            if len(extra) < 4:
                raise self._truncated(tag)
            return tag, struct.unpack(self.endian + "L", extra)[0]
        return tag, struct.unpack(self.endian + "H", head[6:8])[0]

    def _item_header(self, head: bytes) -> tuple[int, int]:
        tag = self._tag(head)
        return tag, struct.unpack(self.endian + "L", head[4:8])[0]

    def _tag(self, head: bytes) -> int:
        if len(head) < 8:
            raise InvalidInstance("file ends inside an element header (truncated)")
        group, element = struct.unpack(self.endian + "HH", head[:4])
        return group << 16 | element

    def _skip(self, length: int, tag: int) -> None:
        end = self.fp.tell() + length
        if end > self.size:
            raise self._truncated(tag, end)
        self.fp.seek(end)

    def _truncated(self, tag: int, end: int | None = None) -> InvalidInstance:
        where = f"; it needs {end} bytes, the file has {self.size}" if end else ""
        return InvalidInstance(f"truncated at element ({tag >> 16:04X},{tag & 0xFFFF:04X}){where}")
