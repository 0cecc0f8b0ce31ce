"""Geometry and encoding: region crop, fit to a viewport, and the image file formats.

Region (PS3.18 WADO-URI ``region``: xmin, ymin, xmax, ymax as fractions of the
image) is cut from the decoded frame before any LUT work; the viewport
(DICOMweb ``viewport`` / WADO-URI ``rows`` and ``columns``) is a box the image is
scaled to fit, aspect ratio kept, each side capped at :data:`MAX_SIDE`.

Speeds measured on a 512x512 CT slice (``bench/render_pipeline.py``): JPEG q85
~0.4 ms (``optimize`` would triple it for 2 % fewer bytes, so it is off); PNG at
zlib level 1 ~5 ms (level 6 is 2-3x slower for 10-20 % fewer bytes); WebP method 2
~8 ms (method 4, Pillow's default, is 2-3x slower for 5 % fewer bytes).
Downscaling uses LANCZOS with ``reducing_gap`` (a box pre-reduction, then LANCZOS:
near-LANCZOS quality at BILINEAR's speed); upscaling uses BICUBIC.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from viewer.errors import RenderError

MAX_SIDE = 4096  # viewport sides above this are capped
PNG_LEVEL = 1
WEBP_METHOD = 2
REDUCING_GAP = 2.0
GIF_MIN_DELAY_MS = 20  # browsers slow down GIF frames shorter than this


def crop_box(
    rows: int, columns: int, region: tuple[float, float, float, float]
) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom) of a fractional region; at least 1 px."""
    xmin, ymin, xmax, ymax = region
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in region):
        raise RenderError(f"region {region} must be fractions from 0 to 1")
    if not (xmin < xmax and ymin < ymax):
        raise RenderError(f"region {region} must have xmin < xmax and ymin < ymax")
    left, top = math.floor(xmin * columns), math.floor(ymin * rows)
    right = max(math.ceil(xmax * columns), left + 1)
    bottom = max(math.ceil(ymax * rows), top + 1)
    return left, top, min(right, columns), min(bottom, rows)


def crop(frame: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The pixels of ``box`` (a view, no copy)."""
    if box is None:
        return frame
    left, top, right, bottom = box
    return frame[top:bottom, left:right]


def fitted_size(size: tuple[int, int], viewport: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of ``size`` scaled to fit inside ``viewport``, aspect ratio kept."""
    width, height = size
    box_w, box_h = (min(int(side), MAX_SIDE) for side in viewport)
    if box_w <= 0 or box_h <= 0:
        raise RenderError(f"viewport {viewport} must be positive")
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_image(pixels: np.ndarray) -> Image.Image:
    """A Pillow image of 8-bit grey (rows, columns) or RGB (rows, columns, 3) pixels."""
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB" if pixels.ndim == 3 else "L")


def resize(image: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    """``image`` scaled to fit ``viewport`` (unchanged when it already fits exactly)."""
    if viewport is None:
        return image
    target = fitted_size(image.size, viewport)
    if target == image.size:
        return image
    if target[0] < image.size[0]:
        return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    return image.resize(target, Image.Resampling.BICUBIC)


def encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    """``image`` as the bytes of ``media_type``."""
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.save(out, "JPEG", quality=quality)
    elif media_type == "image/png":
        image.save(out, "PNG", compress_level=PNG_LEVEL)
    elif media_type == "image/webp":
        image.save(out, "WEBP", quality=quality, method=WEBP_METHOD)
    elif media_type == "image/gif":
        image.save(out, "GIF")
    else:
        raise RenderError(f"unsupported media type {media_type!r}")
    return out.getvalue()


def encode_gif_cine(frames: Sequence[Image.Image], delays_ms: Sequence[float]) -> bytes:
    """An animated GIF that loops forever, frame ``i`` shown for ``delays_ms[i]``."""
    durations = [max(GIF_MIN_DELAY_MS, round(d)) for d in delays_ms]
    out = io.BytesIO()
    frames[0].save(
        out,
        "GIF",
        save_all=True,
        append_images=list(frames[1:]),
        duration=durations,
        loop=0,
        disposal=1,
        optimize=False,
    )
    return out.getvalue()
