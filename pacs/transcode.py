"""Re-encoding a stored instance for a peer that does not accept its transfer syntax.

A stored file is sent as it is whenever the peer accepted its transfer syntax;
when it did not, the instance is re-encoded in Explicit VR Little Endian (the
syntax every peer supports for uncompressed data, PS3.5 §10.1 and PS3.18 §8.7.3),
its pixel data decompressed through pydicom's plugins (pylibjpeg, openjpeg,
pyjpegls). The SOP Instance UID is kept: it is the same instance, differently
encoded (PS3.5 §8.2.1 allows this for lossless syntaxes). Used by WADO-RS and by
the DICOM sender (C-MOVE, C-GET, forwarding).
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

PIXEL_DATA = 0x7FE00010
WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class TranscodeError(ValueError):
    """The stored instance cannot be turned into what was asked (e.g. no decoder)."""


def to_explicit_little_endian(fp: BinaryIO) -> bytes:
    """The instance re-encoded in Explicit VR Little Endian, its pixel data decompressed.

    The SOP Instance UID is kept: this is the same instance in another encoding.
    """
    try:
        ds = dcmread(fp)
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated and PIXEL_DATA in ds:
            ds.decompress(generate_instance_uid=False)
        elif not syntax.is_little_endian:
            _swap_words(ds)  # converts every element, so they no longer hold big-endian bytes
            ds.set_original_encoding(False, True)  # or pydicom refuses to change endianness
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:  # pydicom and its plugins raise many kinds
        raise TranscodeError(f"cannot re-encode the instance: {exc}") from exc
    return out.getvalue()


def _swap_words(ds: Dataset) -> None:
    """Turn big-endian OW/OF/OL/OD/OV values into little endian (pydicom will not)."""
    bits = int(ds.get("BitsAllocated", 8) or 8)
    for elem in ds.iterall():
        size = WORD_SIZES.get(str(elem.VR))
        if elem.tag == PIXEL_DATA:
            size = bits // 8 if bits > 8 else (2 if elem.VR == "OW" else None)
        if size and size > 1 and isinstance(elem.value, bytes | bytearray) and elem.value:
            elem.value = swap_bytes(bytes(elem.value), size)


def swap_bytes(data: bytes, size: int) -> bytes:
    usable = len(data) - len(data) % size
    swapped = np.frombuffer(data[:usable], dtype=f">u{size}").astype(f"<u{size}").tobytes()
    return swapped + data[usable:]
