"""Reading the header of a little-endian DICOM file straight from its bytes.

pydicom's ``dcmread`` and its element access cost about 2 ms for a CT header on
the development machine, a third of what storing an instance costs
(``bench/ingest_header.py``). Ingest needs only the raw bytes of a few dozen
elements, so this reader walks the element headers with :mod:`struct` (PS3.5
§7.1: Explicit and Implicit VR Little Endian, which is how every transfer syntax
but Explicit VR Big Endian and Deflated encodes the data set) and keeps each
top-level value as bytes, plus the items of the few sequences the index reads.

Anything it does not follow (no preamble, big endian, deflated, an unknown VR, a
value running past what was read) makes it return ``None``: the caller then reads
the file with pydicom, which also gives the authoritative error for a bad file.
``tests/test_quick_header.py`` holds both readers to the same index values on
every file pydicom ships.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
UNDEFINED = 0xFFFFFFFF
# Sequences whose items the index reads (storage.attributes).
ITEM_SEQUENCES = frozenset(
    {
        0x00101002,  # OtherPatientIDsSequence
        0x00080051,  # IssuerOfAccessionNumberSequence
        0x00400275,  # RequestAttributesSequence
    }
)
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL"}
    | {"SS", "ST", "TM", "UI", "UL", "US"}
)
_READS = (16 * 1024, 1024 * 1024)  # bytes read at first, then once more before giving up
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_NOT_HERE = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated


@dataclass
class RawElements:
    """One data set (or sequence item): tag -> (VR, value bytes), sequence items apart."""

    values: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    items: dict[int, list[RawElements]] = field(default_factory=dict)


@dataclass(frozen=True)
class QuickHeader:
    meta: RawElements
    dataset: RawElements
    transfer_syntax: str
    data_end: int  # where reading stopped: the pixel data element, or the end of the file


class _Unfollowed(Exception):
    """Something this reader does not handle: use pydicom."""


class _Short(Exception):
    """The header runs past the bytes read so far."""


def read_quick(fp: BinaryIO, size: int) -> QuickHeader | None:
    """The header of the file open in ``fp`` (``size`` bytes), or ``None`` when this
    reader does not follow it."""
    for amount in _READS:
        fp.seek(0)
        buffer = fp.read(amount)
        try:
            return _parse(buffer, complete=len(buffer) >= size)
        except _Short:
            if len(buffer) >= size:
                return None  # the file itself ends early: pydicom says how
        except (_Unfollowed, struct.error, UnicodeDecodeError):
            return None
    return None


def _parse(buffer: bytes, *, complete: bool) -> QuickHeader:
    if len(buffer) < 132 or buffer[128:132] != b"DICM":
        raise _Unfollowed("no preamble")
    meta, position = _meta(buffer, 132)
    syntax_value = meta.values.get(0x00020010)
    if syntax_value is None:
        raise _Unfollowed("no transfer syntax")
    syntax = syntax_value[1].decode("ascii").strip("\x00 ")
    if syntax in _NOT_HERE:
        raise _Unfollowed(syntax)
    parser = _Parser(buffer, implicit=syntax == _IMPLICIT_VR_LITTLE_ENDIAN, complete=complete)
    dataset, end = parser.data_set(position)
    return QuickHeader(meta, dataset, syntax, end)


def _meta(buffer: bytes, position: int) -> tuple[RawElements, int]:
    """Group 0002, always Explicit VR Little Endian (PS3.10 §7.1)."""
    meta = RawElements()
    parser = _Parser(buffer, implicit=False, complete=False)
    while position + 8 <= len(buffer):
        group = struct.unpack_from("<H", buffer, position)[0]
        if group != 0x0002:
            return meta, position
        tag, vr, length, position = parser.element_header(position)
        meta.values[tag] = (vr, parser.value(position, length))
        position += length
    raise _Short


class _Parser:
    def __init__(self, buffer: bytes, *, implicit: bool, complete: bool) -> None:
        self.buffer = buffer
        self.implicit = implicit
        self.complete = complete  # the buffer holds the whole file

    def data_set(self, position: int) -> tuple[RawElements, int]:
        """Top-level elements up to the pixel data (or the end of the file)."""
        elements = RawElements()
        end = len(self.buffer)
        while position < end:
            if end - position < 8:
                raise _Short
            tag = self.tag(position)
            if tag in PIXEL_TAGS:
                return elements, position
            position = self.element(position, elements)
        if not self.complete:
            raise _Short
        return elements, position

    def element(self, position: int, into: RawElements) -> int:
        """Read the element at ``position`` into ``into``; where the next one starts."""
        tag, vr, length, position = self.element_header(position)
        if length == UNDEFINED:
            if vr != "SQ" and not self.implicit:  # an explicit UN holds implicit VR items
                raise _Unfollowed(f"undefined length {vr}")
            items, position = self.undefined_sequence(position, keep=tag in ITEM_SEQUENCES)
            into.items[tag] = items
            into.values[tag] = ("SQ", b"")
            return position
        end = position + length
        if end > len(self.buffer):
            raise _Short
        if tag in ITEM_SEQUENCES and (vr == "SQ" or self.implicit):
            into.items[tag] = self.defined_sequence(position, end)
            into.values[tag] = ("SQ", b"")
        else:
            into.values[tag] = (vr, self.buffer[position:end])
        return end

    def element_header(self, position: int) -> tuple[int, str, int, int]:
        if position + 8 > len(self.buffer):
            raise _Short
        tag = self.tag(position)
        if self.implicit:
            length = struct.unpack_from("<I", self.buffer, position + 4)[0]
            return tag, _implicit_vr(tag), length, position + 8
        vr = self.buffer[position + 4 : position + 6].decode("ascii")
        if vr in _LONG_VRS:
            if position + 12 > len(self.buffer):
                raise _Short
            return tag, vr, struct.unpack_from("<I", self.buffer, position + 8)[0], position + 12
        if vr not in _SHORT_VRS:
            raise _Unfollowed(f"VR {vr!r}")
        return tag, vr, struct.unpack_from("<H", self.buffer, position + 6)[0], position + 8

    def tag(self, position: int) -> int:
        group, element = struct.unpack_from("<HH", self.buffer, position)
        return int(group << 16 | element)

    def value(self, position: int, length: int) -> bytes:
        if position + length > len(self.buffer):
            raise _Short
        return self.buffer[position : position + length]

    def defined_sequence(self, position: int, end: int) -> list[RawElements]:
        items = []
        while position < end:
            tag, length = self._item_header(position)
            position += 8
            if tag != ITEM:
                raise _Unfollowed("not an item")
            if length == UNDEFINED:
                item, position = self.undefined_item(position)
            else:
                item = self.defined_item(position, position + length)
                position += length
            items.append(item)
        return items

    def undefined_sequence(self, position: int, *, keep: bool) -> tuple[list[RawElements], int]:
        items = []
        while True:
            tag, length = self._item_header(position)
            position += 8
            if tag == SEQUENCE_END:
                return (items if keep else []), position
            if tag != ITEM:
                raise _Unfollowed("not an item")
            if length == UNDEFINED:
                item, position = self.undefined_item(position)
            else:
                if position + length > len(self.buffer):
                    raise _Short
                item = self.defined_item(position, position + length)
                position += length
            items.append(item)

    def defined_item(self, position: int, end: int) -> RawElements:
        item = RawElements()
        while position < end:
            position = self.element(position, item)
        return item

    def undefined_item(self, position: int) -> tuple[RawElements, int]:
        item = RawElements()
        while True:
            if position + 8 > len(self.buffer):
                raise _Short
            if self.tag(position) == ITEM_END:
                return item, position + 8
            position = self.element(position, item)

    def _item_header(self, position: int) -> tuple[int, int]:
        if position + 8 > len(self.buffer):
            raise _Short
        return self.tag(position), struct.unpack_from("<I", self.buffer, position + 4)[0]


def _implicit_vr(tag: int) -> str:
    """The dictionary VR of a tag in an Implicit VR data set; ``UN`` when unknown."""
    if tag >> 16 & 1 or tag & 0xFFFF == 0:  # private or group length
        return "UL" if tag & 0xFFFF == 0 else "UN"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]
