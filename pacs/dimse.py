"""DIMSE command sets for the lean Storage SCP (:mod:`pacs.store_scp`).

Command sets are always Implicit VR Little Endian (PS3.7 §6.3.1), a handful of
group 0000 elements, and the File Meta Information put before a received data set
is a fixed handful of group 0002 elements (PS3.10 §7.1). Both are written by hand:
building the file meta with pydicom (``create_file_meta`` + ``write_file_meta_info``,
as pynetdicom does) cost ~1.3 ms per instance, more than the rest of receiving it
(``bench/cstore_receive.py``); the bytes are the same (``tests/test_store_scp.py``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from pacs.status import error_comment

C_STORE_RQ = 0x0001  # PS3.7 §9.3.1.1
C_ECHO_RQ = 0x0030  # PS3.7 §9.3.5.1
_NO_DATA_SET = 0x0101  # CommandDataSetType, PS3.7 Table E.1-1

_AFFECTED_SOP_CLASS = 0x0000_0002
_COMMAND_FIELD = 0x0000_0100
_MESSAGE_ID = 0x0000_0110
_MESSAGE_ID_RESPONDED = 0x0000_0120
_DATA_SET_TYPE = 0x0000_0800
_STATUS = 0x0000_0900
_ERROR_COMMENT = 0x0000_0902
_AFFECTED_SOP_INSTANCE = 0x0000_1000
_PRIORITY = 0x0000_0700
_MOVE_ORIGINATOR_AE = 0x0000_1030
_MOVE_ORIGINATOR_ID = 0x0000_1031


class CommandError(ValueError):
    """A command set that cannot be read."""


@dataclass(frozen=True)
class Command:
    """The parts of a request command set the SCP acts on (PS3.7 Table 9.3-1)."""

    context_id: int
    field: int
    message_id: int
    has_data_set: bool
    sop_class_uid: str
    sop_instance_uid: str


def command_elements(data: bytes) -> dict[int, bytes]:
    """The elements of an Implicit VR Little Endian command set, by tag (raw values)."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        values[group << 16 | element] = data[offset : offset + length]
        offset += length
    return values


def parse_command(data: bytes, context_id: int) -> Command:
    """Read a request's Implicit VR Little Endian command set."""
    values = command_elements(data)
    try:
        field = struct.unpack("<H", values[_COMMAND_FIELD])[0]
        message_id = struct.unpack("<H", values[_MESSAGE_ID])[0]
        data_set_type = struct.unpack("<H", values.get(_DATA_SET_TYPE, b"\x01\x01"))[0]
    except (struct.error, KeyError) as exc:
        raise CommandError(f"malformed command set: {exc}") from exc
    return Command(
        context_id=context_id,
        field=field,
        message_id=message_id,
        has_data_set=data_set_type != _NO_DATA_SET,
        sop_class_uid=_text(values.get(_AFFECTED_SOP_CLASS, b"")),
        sop_instance_uid=_text(values.get(_AFFECTED_SOP_INSTANCE, b"")),
    )


def encode_store_request(
    sop_class_uid: str,
    sop_instance_uid: str,
    message_id: int,
    originator: tuple[str, int] | None = None,
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 Table 9.3-1), low priority; ``originator`` is
    the AE title and message ID of the C-MOVE it serves."""
    elements = [
        (_AFFECTED_SOP_CLASS, _uid(sop_class_uid)),
        (_COMMAND_FIELD, struct.pack("<H", C_STORE_RQ)),
        (_MESSAGE_ID, struct.pack("<H", message_id)),
        (_PRIORITY, struct.pack("<H", 0x0002)),
        (_DATA_SET_TYPE, struct.pack("<H", 0x0000)),  # a data set follows
        (_AFFECTED_SOP_INSTANCE, _uid(sop_instance_uid)),
    ]
    if originator is not None:
        elements.append((_MOVE_ORIGINATOR_AE, _padded(originator[0][:16])))
        elements.append((_MOVE_ORIGINATOR_ID, struct.pack("<H", originator[1] & 0xFFFF)))
    return _command_set(elements)


def encode_response(request: Command, status: int, comment: str = "") -> bytes:
    """The response command set to ``request`` (PS3.7 §9.3.1.2, §9.3.5.2)."""
    elements = [
        (_AFFECTED_SOP_CLASS, _uid(request.sop_class_uid)),
        (_COMMAND_FIELD, struct.pack("<H", 0x8000 | request.field)),
        (_MESSAGE_ID_RESPONDED, struct.pack("<H", request.message_id)),
        (_DATA_SET_TYPE, struct.pack("<H", _NO_DATA_SET)),
        (_STATUS, struct.pack("<H", status)),
    ]
    if comment:
        elements.append((_ERROR_COMMENT, _lo(comment)))
    if request.sop_instance_uid:
        elements.append((_AFFECTED_SOP_INSTANCE, _uid(request.sop_instance_uid)))
    return _command_set(elements)


def _command_set(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_element(tag, value) for tag, value in elements)
    return _element(0x0000_0000, struct.pack("<I", len(body))) + body


def file_meta_prefix(command: Command, transfer_syntax: str, source_ae_title: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 §7.1) to put before a
    received data set: what pynetdicom writes, plus the Source AE Title."""
    elements = [
        _explicit(0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, b"UI", _uid(command.sop_class_uid)),
        _explicit(0x0003, b"UI", _uid(command.sop_instance_uid)),
        _explicit(0x0010, b"UI", _uid(transfer_syntax)),
        _explicit(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
        _explicit(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION)),
    ]
    if source_ae_title:
        elements.append(_explicit(0x0016, b"AE", _padded(source_ae_title)))
    body = b"".join(elements)
    group_length = _explicit(0x0000, b"UL", struct.pack("<I", len(body)))
    return _PREAMBLE + group_length + body


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element in Explicit VR Little Endian (PS3.5 §7.1.2)."""
    if vr == b"OB":  # 2 reserved bytes and a 4-byte length
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    return _padded(error_comment(value))


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ")
