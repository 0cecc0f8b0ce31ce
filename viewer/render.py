"""Rendering: from a stored instance and a frame to image bytes a browser shows.

This module is the one function the HTTP side calls (:func:`render`) and the types it
takes and gives. The pipeline behind it (decode, Modality LUT, VOI LUT, Presentation
LUT, colour, resize, encode) follows PS3.3 C.11 / C.7.6.3:

1. parse the file once and decode only the frame asked for (:mod:`viewer.pixels`);
2. cut the WADO-URI region / DICOMweb source rectangle out of it;
3. grayscale: Modality LUT, then the VOI chosen in this order: the explicit window,
   else the preset (:mod:`viewer.presets`), else the file's first window (with its
   VOI LUT Function), else the file's VOI LUT Sequence, else an automatic min-max
   window; then MONOCHROME1 / Presentation LUT Shape INVERSE inversion, after the
   VOI; colour: to RGB, palette through its LUTs (:mod:`viewer.lut`);
4. fit the viewport, burn in the annotation (:mod:`viewer.annotate`), encode
   (:mod:`viewer.encode`); an ``image/gif`` of ``all_frames`` is a cine loop timed by
   the file's Frame Time / Frame Time Vector / Cine Rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from viewer import annotate, encode, lut, pixels
from viewer.errors import RenderError, UndecodablePixels
from viewer.lut import VoiFunction
from viewer.presets import PRESET_NAMES, preset

__all__ = [
    "PIPELINE_VERSION",
    "MediaType",
    "RenderError",
    "RenderParams",
    "RenderedImage",
    "UndecodablePixels",
    "VoiFunction",
    "Window",
    "render",
]

MediaType = Literal["image/jpeg", "image/png", "image/webp", "image/gif"]

# Bump when the same parameters would give different bytes (cache keys may use it).
PIPELINE_VERSION = "1"
MEDIA_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", "image/gif")
DEFAULT_FRAME_MS = 100.0  # a cine loop with no Frame Time, Frame Time Vector or Cine Rate
GREY = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class Window:
    center: float
    width: float  # > 0
    function: VoiFunction = "LINEAR"


@dataclass(frozen=True)
class RenderParams:
    """What the client asked for; ``None`` means the file's own default."""

    frame: int = 1  # 1-based, as in DICOMweb
    window: Window | None = None  # explicit window; else preset; else the file's; else auto
    preset: str | None = None  # lung, mediastinum, bone, brain, stroke, abdomen, liver
    viewport: tuple[int, int] | None = None  # fit inside (columns, rows), aspect kept
    region: tuple[float, float, float, float] | None = None  # WADO-URI: xmin, ymin, xmax, ymax
    quality: int = 85  # JPEG/WebP quality 1-100
    media_type: MediaType = "image/jpeg"
    annotation: frozenset[str] = field(default_factory=frozenset)  # {"patient", "technique"}
    all_frames: bool = False  # image/gif of every frame (cine)
    # DICOMweb viewport's sx, sy, sw, sh in pixels (PS3.18 8.3.5.1.3); wins over region
    source_rect: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderedImage:
    body: bytes
    media_type: MediaType


def render(source: Path, params: RenderParams) -> RenderedImage:
    """Render one frame (or, for a cine GIF, every frame) of the DICOM file at ``source``.

    Raises :class:`RenderError` for parameters that do not fit the instance
    (frame out of range, window width <= 0, absurd viewport) and
    :class:`UndecodablePixels` when its pixel data cannot be decoded.
    """
    requested = requested_voi(params)
    _check_output(params)
    instance = pixels.open_instance(source)
    if params.all_frames and instance.frames > 1:
        body = _render_cine(instance, params, requested)
    else:
        body = _render_frame(instance, params, requested)
    return RenderedImage(body=body, media_type=params.media_type)


def requested_voi(params: RenderParams) -> lut.Voi | None:
    """The window the client asked for (explicit, else preset), checked; ``None``
    when the file's own default applies."""
    named = None
    if params.preset is not None:
        named = preset(params.preset)
        if named is None:
            known = ", ".join(PRESET_NAMES)
            raise RenderError(f"unknown preset {params.preset!r}: one of {known}")
    if params.window is not None:
        w = params.window
        return lut.check_window(float(w.center), float(w.width), str(w.function))
    if named is None:
        return None
    return lut.Voi(named.center, named.width, "LINEAR", label=str(params.preset).strip().lower())


def _check_output(params: RenderParams) -> None:
    if params.media_type not in MEDIA_TYPES:
        raise RenderError(f"unsupported media type {params.media_type!r}")
    lossy = params.media_type in ("image/jpeg", "image/webp")
    if lossy and not 1 <= params.quality <= 100:
        raise RenderError(f"quality must be 1-100, not {params.quality}")
    if params.viewport is not None and min(params.viewport) <= 0:
        raise RenderError(f"viewport {params.viewport} must be positive")
    if params.all_frames and params.media_type != "image/gif":
        raise RenderError("all frames (a cine loop) can only be rendered as image/gif")


def _render_frame(
    instance: pixels.Instance, params: RenderParams, requested: lut.Voi | None
) -> bytes:
    index = params.frame - 1
    if not 0 <= index < instance.frames:
        raise RenderError(
            f"frame {params.frame} is out of range: the instance has {instance.frames}"
        )
    frame = pixels.decode_frame(instance, index)
    box = _box(frame, params)
    if _is_colour(instance, frame):
        image = _finish(instance, frame, index, box, None, params)
    else:
        attrs = lut.frame_attributes(instance.ds, index)
        voi = requested or _file_or_auto_voi(instance, attrs, [frame])
        image = _finish(instance, frame, index, box, (attrs, voi), params)
    return encode.encode(image, params.media_type, params.quality)


def _render_cine(
    instance: pixels.Instance, params: RenderParams, requested: lut.Voi | None
) -> bytes:
    """Every frame as an animated GIF, all with frame 1's VOI (no flicker)."""
    frames = list(pixels.decode_frames(instance))
    if not frames:
        raise UndecodablePixels("the pixel data holds no frames")
    box = _box(frames[0], params)
    images = []
    voi: lut.Voi | None = None
    colour = _is_colour(instance, frames[0])
    for index, frame in enumerate(frames):
        grey = None
        if not colour:
            attrs = lut.frame_attributes(instance.ds, index)
            voi = voi or requested or _file_or_auto_voi(instance, attrs, frames)
            grey = (attrs, voi)
        images.append(_finish(instance, frame, index, box, grey, params))
    return encode.encode_gif_cine(images, frame_delays_ms(instance, len(images)))


def _finish(
    instance: pixels.Instance,
    frame: np.ndarray,
    index: int,
    box: tuple[int, int, int, int] | None,
    grey: tuple[Dataset, lut.Voi] | None,
    params: RenderParams,
) -> Image.Image:
    """LUTs (``grey``: the frame's LUT attributes and VOI; ``None`` for colour),
    viewport and annotation of one decoded frame."""
    part = encode.crop(frame, box)
    shown = lut.grey_to_8bit(part, *grey) if grey else lut.colour_to_8bit(part, instance.ds)
    image = encode.resize(encode.to_image(shown), params.viewport)
    if params.annotation:
        voi_text = grey[1].describe() if grey else ""
        info = annotate.FrameInfo(index + 1, instance.frames, voi_text)
        image = annotate.burn_in(image, instance.ds, params.annotation, info)
    return image


def _is_colour(instance: pixels.Instance, frame: np.ndarray) -> bool:
    photometric = str(instance.ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in GREY:
        return False
    return photometric != "" or frame.ndim == 3


def _file_or_auto_voi(
    instance: pixels.Instance, attrs: Dataset, frames: list[np.ndarray]
) -> lut.Voi:
    """The file's default VOI (``attrs``: one frame's), else the min-max of ``frames``."""
    chosen = lut.file_voi(attrs)
    if chosen is not None:
        return chosen
    extremes: list[Any] = []
    for frame in frames:
        padding = lut.padding_mask(instance.ds, frame)
        values = frame[~padding] if padding is not None else frame
        extremes.extend((values.min(), values.max()))
    return lut.auto_voi(attrs, np.asarray(extremes, dtype=frames[0].dtype))


def _box(frame: np.ndarray, params: RenderParams) -> tuple[int, int, int, int] | None:
    """The pixel box of the source rectangle or region, ``None`` for the whole frame."""
    rows, columns = frame.shape[0], frame.shape[1]
    if params.source_rect is not None:
        sx, sy, sw, sh = params.source_rect
        if sx < 0 or sy < 0 or sw <= 0 or sh <= 0 or sx + sw > columns or sy + sh > rows:
            raise RenderError(
                f"source rectangle {sx},{sy},{sw},{sh} is not inside the {columns}x{rows} image"
            )
        return sx, sy, sx + sw, sy + sh
    if params.region is not None:
        return encode.crop_box(rows, columns, params.region)
    return None


def frame_delays_ms(instance: pixels.Instance, count: int) -> list[float]:
    """How long each frame of a cine loop shows (PS3.3 C.7.6.5 Cine Module): Frame
    Time, else the Frame Time Vector's increments, else 1000 / Cine Rate (or
    Recommended Display Frame Rate), else :data:`DEFAULT_FRAME_MS`."""
    ds = instance.ds
    vector = _floats(ds.get("FrameTimeVector"))
    if _positive(ds.get("FrameTime")):
        return [float(ds.FrameTime)] * count
    if len(vector) == count and count > 1:
        increments = vector[1:]  # entry i: the time from frame i-1 to frame i
        return [*increments, increments[-1]]
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = ds.get(keyword)
        if _positive(rate):
            return [1000.0 / float(rate)] * count
    return [DEFAULT_FRAME_MS] * count


def _positive(value: object) -> bool:
    try:
        return value is not None and value != "" and float(value) > 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _floats(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    items: list[Any] = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        return []
