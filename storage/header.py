"""Reading what the index needs from a DICOM file without touching its pixels.

:func:`read_header` parses everything up to Pixel Data, then walks the element
headers that follow (pixel fragments included) by seeking, to prove the file is
complete without reading or decoding the pixel bytes. A truncated file, a file
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
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

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
    dataset: FileDataset
    transfer_syntax_uid: UID
    file_size: int


def is_valid_uid(value: object) -> bool:
    """PS3.5 §9.1: digits and dots, at most 64 characters, no empty component."""
    return isinstance(value, str) and len(value) <= 64 and UID_PATTERN.fullmatch(value) is not None


def read_header(path: Path) -> Header:
    """Read and check the header of the DICOM file at ``path``."""
    size = path.stat().st_size
    with path.open("rb") as fp:
        try:
            ds = dcmread(fp, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, struct.error, ValueError, TypeError) as exc:
            raise InvalidInstance(f"not a readable DICOM file: {exc}") from exc
        except Exception as exc:  # pydicom raises many types on garbage input
            raise InvalidInstance(f"not a readable DICOM file: {type(exc).__name__}") from exc
        syntax = _transfer_syntax(ds)
        if syntax != DeflatedExplicitVRLittleEndian:
            _walk_rest(fp, size, syntax.is_little_endian, syntax.is_implicit_VR)
    _check_identity(ds)
    return Header(ds, syntax, size)


def _transfer_syntax(ds: FileDataset) -> UID:
    syntax = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
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
    meta_uid = ds.file_meta.get("MediaStorageSOPInstanceUID")
    if meta_uid and str(meta_uid) != str(ds.SOPInstanceUID):
        raise MismatchedInstance(
            f"SOPInstanceUID {ds.SOPInstanceUID} differs from the announced {meta_uid}"
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
