"""Reading a stored instance and decoding its pixel data, one frame at a time.

The file is parsed once (:func:`open_instance`). Pixel data larger than
:data:`DEFER_BYTES` is left on disk, so asking for frame 17 of a long uncompressed
cine reads that frame's bytes only. Decoding is pydicom 3's
:func:`pydicom.pixels.pixel_array` with ``index``, which decompresses only the frame
asked for, for every transfer syntax pydicom has a decoder for: native little and
big endian, deflated, JPEG baseline / extended / lossless (pylibjpeg-libjpeg or
Pillow), JPEG-LS (pyjpegls), JPEG 2000 and HTJ2K (pylibjpeg-openjpeg), RLE.

pydicom also does what PS3.3 C.7.6.3 asks of the raw samples: it masks the bits
above Bits Stored, sign-extends signed pixels (Pixel Representation 1), unpacks
1-bit data, undoes Planar Configuration 1 and YBR_FULL_422 subsampling, and
converts YBR_FULL / YBR_FULL_422 (and JPEG 2000's YBR_ICT / YBR_RCT) to RGB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.utils import iter_pixels, pixel_array

from viewer.errors import RenderError, UndecodablePixels

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float and Double Float Pixel Data
DEFER_BYTES = 4 * 1024 * 1024  # pixel data above this is read frame by frame from disk
T = TypeVar("T")


@dataclass(frozen=True)
class Instance:
    """A parsed instance: its attributes, and where its pixel data is."""

    path: Path
    ds: Dataset
    frames: int  # Number of Frames (1 when absent)
    deferred: bool  # the pixel data was left on disk by dcmread

    @property
    def transfer_syntax(self) -> str:
        uid = self.ds.file_meta.get("TransferSyntaxUID") if hasattr(self.ds, "file_meta") else None
        return getattr(uid, "name", None) or str(uid)


def open_instance(path: Path) -> Instance:
    """Parse ``path`` once; :class:`UndecodablePixels` if it is not readable DICOM,
    :class:`RenderError` if it holds no image (PS3.3 C.7.6.3 Image Pixel Module)."""
    try:
        ds = dcmread(path, defer_size=DEFER_BYTES)
    except FileNotFoundError:
        raise  # a missing blob is the store's problem, not the data's
    except Exception as exc:  # truncated or not DICOM: InvalidDicomError, EOFError, ...
        raise UndecodablePixels(f"the stored file cannot be parsed as DICOM: {exc}") from exc
    tag = next((t for t in PIXEL_TAGS if t in ds), None)
    if tag is None:
        raise RenderError("the instance has no pixel data (it is not an image)")
    deferred = ds.get_item(tag, keep_deferred=True).value is None
    return Instance(path=Path(path), ds=ds, frames=_frame_count(ds), deferred=deferred)


def _frame_count(ds: Dataset) -> int:
    """Number of Frames (0028,0008), 1 when absent, empty or not a positive integer."""
    try:
        count = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(count, 1)


def decode_frame(instance: Instance, index: int) -> np.ndarray:
    """Decode frame ``index`` (0-based) only; :class:`UndecodablePixels` on failure."""
    if not 0 <= index < instance.frames:
        raise RenderError(f"frame {index + 1} is out of range: the instance has {instance.frames}")
    source: Any = instance.path if instance.deferred else instance.ds
    return _guarded(instance, lambda: pixel_array(source, index=index))


def decode_frames(instance: Instance) -> Iterator[np.ndarray]:
    """Decode every frame in order, one at a time (a cine loop)."""
    source: Any = instance.path if instance.deferred else instance.ds
    frames = iter_pixels(source)
    while True:
        frame = _guarded(instance, lambda: next(frames, None))
        if frame is None:
            return
        yield frame


def _guarded(instance: Instance, decode: Callable[[], T]) -> T:
    """Run ``decode``; any decoder failure becomes :class:`UndecodablePixels`."""
    try:
        return decode()
    except RenderError:
        raise
    except Exception as exc:  # decoders raise anything: ValueError, RuntimeError, OSError...
        raise UndecodablePixels(
            f"the pixel data ({instance.transfer_syntax}) cannot be decoded: {exc}"
        ) from exc
