"""A ZIP archive written as it is sent: ``zipfile`` on a write-only pipe.

``zipfile.ZipFile`` handles an unseekable output by writing each member's sizes and
CRC in a data descriptor after its data (APPNOTE 4.3.9), so no member needs to be
known in full before its bytes leave. Members are stored (``ZIP_STORED``): DICOM
pixel data is often compressed already, and deflating the rest would make the
download CPU-bound instead of disk-bound. What is held in memory at any time is one
read chunk; Zip64 records are used where sizes or offsets pass 4 GiB.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name, its size and how to open it.

    ``size`` None: not known until the member is opened (a file made at the end,
    such as a DICOMDIR); it must then stay under 4 GiB, as no Zip64 record is
    planned for it.
    """

    name: str
    size: int | None
    open: Callable[[], BinaryIO]


class _Pipe(io.RawIOBase):
    """Write-only, unseekable: what zipfile writes waits here until it is drained."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def zip_stream(members: Iterable[Member]) -> Iterator[bytes]:
    """The bytes of a ZIP of ``members``, a chunk at a time, files opened one by one."""
    pipe = _Pipe()
    stamp = time.localtime()[:6]
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED) as archive:
        for member in members:
            info = zipfile.ZipInfo(member.name, date_time=stamp)
            info.compress_type = zipfile.ZIP_STORED
            if member.size is not None:
                info.file_size = member.size  # lets zipfile choose Zip64 up front
            with member.open() as source, archive.open(info, "w") as target:
                while chunk := source.read(CHUNK):
                    target.write(chunk)
                    yield pipe.drain()
            if tail := pipe.drain():
                yield tail
    yield pipe.drain()
