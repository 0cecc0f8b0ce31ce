"""Reading stored instances for sending: whole files, re-encoded files, frames, bulk data.

Everything works from an open blob and reads only what it needs: a file sent as
stored goes out in 1 MiB chunks; a frame of a multi-frame instance is found
through the offset table (or the frame boundaries) without touching the others;
uncompressed frames are sliced straight out of the file. Only re-encoding a
whole instance (compressed or big endian to Explicit VR Little Endian) holds
that one instance in memory.

Decoding goes through pydicom and the installed plugins (pylibjpeg, openjpeg,
pyjpegls). Decoded colour comes out as RGB, as ``Dataset.decompress`` makes it:
a YBR JPEG is never sent as bytes that claim to be YBR but are not.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_frames, get_frame
from pydicom.pixels import pack_bits, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from api.dicomweb.negotiation import is_compressed
from pacs.transcode import PIXEL_DATA, WORD_SIZES, TranscodeError, swap_bytes
from pacs.transcode import to_explicit_little_endian as to_explicit_little_endian

CHUNK = 1024 * 1024
PIXEL_TAGS = {PIXEL_DATA: "OB", 0x7FE00008: "OF", 0x7FE00009: "OD"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS.add(b"UV")


def file_chunks(fp: BinaryIO) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time; closes it at the end (or when abandoned)."""
    with fp:
        while chunk := fp.read(CHUNK):
            yield chunk


@dataclass(frozen=True)
class PixelElement:
    """Where an instance's pixel data is: its tag, VR, and value position in the file."""

    tag: int
    vr: str
    offset: int  # of the value; -1 when the dataset had to be read whole (deflated)
    length: int  # 0xFFFFFFFF for encapsulated pixel data


class StoredFile:
    """A stored instance opened for its header and pixel data; close it when done."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self._whole: FileDataset | None = None
        try:
            self.header: FileDataset = dcmread(fp, stop_before_pixels=True)
            self.syntax = str(self.header.file_meta.TransferSyntaxUID)
            self.little_endian = self.syntax != "1.2.840.10008.1.2.2"
            if self.syntax == DeflatedExplicitVRLittleEndian:
                fp.seek(0)
                self._whole = dcmread(fp)  # inflated in memory: there is nothing to seek
                self.pixel = self._pixel_from_dataset(self._whole)
            else:
                self.pixel = self._pixel_from_file()
        except Exception:
            fp.close()
            raise

    def __enter__(self) -> StoredFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.fp.close()

    @property
    def encapsulated(self) -> bool:
        return is_compressed(self.syntax)

    @property
    def number_of_frames(self) -> int:
        if self.pixel is None:
            return 0
        try:
            return max(int(self.header.get("NumberOfFrames") or 1), 1)
        except (TypeError, ValueError):
            return 1

    # --- frames ------------------------------------------------------------------

    def encoded_frames(self, indices: list[int]) -> Iterator[bytes]:
        """The stored compressed bitstreams of the frames at ``indices`` (0-based)."""
        assert self.pixel is not None and self.encapsulated
        frames, offsets = self.number_of_frames, self._extended_offsets()
        if len(indices) == 1:
            self.fp.seek(self.pixel.offset)
            yield get_frame(self.fp, indices[0], number_of_frames=frames, extended_offsets=offsets)
            return
        # One pass over the fragments; frames go out as soon as their turn comes.
        self.fp.seek(self.pixel.offset)
        wanted, found, next_out = set(indices), {}, 0
        for index, frame in enumerate(
            generate_frames(self.fp, number_of_frames=frames, extended_offsets=offsets)
        ):
            if index in wanted:
                found[index] = frame
            while next_out < len(indices) and indices[next_out] in found:
                current = indices[next_out]
                next_out += 1
                yield found[current]
                if current not in indices[next_out:]:
                    del found[current]
            if next_out == len(indices):
                return
        raise TranscodeError(f"the pixel data holds fewer frames than {max(indices) + 1}")

    def native_frames(self, indices: list[int]) -> Iterator[bytes]:
        """The frames as uncompressed little-endian bytes, decoded when stored compressed."""
        assert self.pixel is not None
        if self.encapsulated or self._bits_allocated() == 1:
            for index in indices:
                yield self._decoded(index)
            return
        size = self._frame_length()
        for index in indices:
            yield self._native_slice(index * size, size)

    def native_pixel_data(self) -> Iterator[bytes]:
        """The whole pixel data value, uncompressed little endian, a piece at a time."""
        assert self.pixel is not None
        if self.encapsulated:
            yield from self.native_frames(list(range(self.number_of_frames)))
            return
        if self._whole is not None:
            yield bytes(self._whole[self.pixel.tag].value)
            return
        word = self._word_size()
        step = CHUNK - CHUNK % 8
        for start in range(0, self.pixel.length, step):
            yield self._native_slice(start, min(step, self.pixel.length - start), word)

    def _native_slice(self, start: int, size: int, word: int | None = None) -> bytes:
        assert self.pixel is not None
        if self._whole is not None:
            data = bytes(self._whole[self.pixel.tag].value[start : start + size])
        else:
            self.fp.seek(self.pixel.offset + start)
            data = self.fp.read(size)
        if len(data) < size:
            raise TranscodeError("the pixel data is shorter than its frames")
        word = self._word_size() if word is None else word
        return data if self.little_endian or word < 2 else swap_bytes(data, word)

    def _decoded(self, index: int) -> bytes:
        source: Any = self._whole
        if source is None:
            self.fp.seek(0)
            source = self.fp
        try:
            raw = self._bits_allocated() == 1
            array = pixel_array(source, index=index, raw=raw)
        except Exception as exc:
            raise TranscodeError(f"cannot decode frame {index + 1} ({self.syntax}): {exc}") from exc
        if self._bits_allocated() == 1:
            return pack_bits(array)
        return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()

    def _frame_length(self) -> int:
        header = self.header
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        length = int(header.Rows) * int(header.Columns) * samples * (self._bits_allocated() // 8)
        if str(header.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
            length = length // 3 * 2  # two chroma samples shared by each pair of pixels
        return length

    def _bits_allocated(self) -> int:
        return int(self.header.get("BitsAllocated", 8) or 8)

    def _word_size(self) -> int:
        assert self.pixel is not None
        if self.pixel.tag != PIXEL_DATA:
            return 4 if self.pixel.tag == 0x7FE00008 else 8
        bits = self._bits_allocated()
        return bits // 8 if bits > 8 else (2 if self.pixel.vr == "OW" else 1)

    def _extended_offsets(self) -> tuple[bytes, bytes] | None:
        table = self.header.get("ExtendedOffsetTable")
        lengths = self.header.get("ExtendedOffsetTableLengths")
        if table is None or lengths is None or not table.value or not lengths.value:
            return None
        return bytes(table.value), bytes(lengths.value)

    # --- other bulk data -----------------------------------------------------------

    def element_bytes(self, path: list[int]) -> bytes | None:
        """The value of the binary element at ``path`` (tag, item, tag, ...), little endian.

        ``None`` when there is no such element or it is not binary (no bulk data).
        Elements after the pixel data are not offered: the metadata stops before it.
        """
        dataset: Dataset = self.header if self._whole is None else self._whole
        if path[0] >= 0x7FE00008:
            return None
        elem = None
        for depth in range(0, len(path), 2):
            elem = dataset.get(path[depth])
            if elem is None:
                return None
            if depth + 1 < len(path):
                if elem.VR != "SQ" or path[depth + 1] >= len(elem.value):
                    return None
                dataset = elem.value[path[depth + 1]]
        if elem is None or not isinstance(elem.value, bytes | bytearray):
            return None
        value = bytes(elem.value)
        size = WORD_SIZES.get(str(elem.VR), 1)
        return value if self.little_endian or size < 2 else swap_bytes(value, size)

    # --- where the pixel data is --------------------------------------------------

    def _pixel_from_file(self) -> PixelElement | None:
        """Read the element header where ``stop_before_pixels`` left the file."""
        start = self.fp.tell()
        head = self.fp.read(8)
        if len(head) < 8:
            return None
        endian = "<" if self.little_endian else ">"
        group, element = struct.unpack(f"{endian}HH", head[:4])
        tag = group << 16 | element
        if tag not in PIXEL_TAGS:
            return None
        if self.syntax == "1.2.840.10008.1.2":  # implicit VR
            (length,) = struct.unpack(f"{endian}I", head[4:8])
            return PixelElement(tag, self._implicit_vr(tag), start + 8, length)
        vr = head[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack(f"{endian}I", self.fp.read(4))
            return PixelElement(tag, vr.decode("ascii"), start + 12, length)
        (length,) = struct.unpack(f"{endian}H", head[6:8])
        return PixelElement(tag, vr.decode("ascii", "replace"), start + 8, length)

    def _pixel_from_dataset(self, ds: Dataset) -> PixelElement | None:
        for tag in PIXEL_TAGS:
            if tag in ds:
                elem = ds[tag]
                return PixelElement(tag, str(elem.VR), -1, len(elem.value or b""))
        return None

    def _implicit_vr(self, tag: int) -> str:
        if tag != PIXEL_DATA:
            return PIXEL_TAGS[tag]
        return "OW" if self._bits_allocated() > 8 else "OB"
