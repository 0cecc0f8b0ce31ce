"""From decoded samples to 8-bit display values: the grayscale and colour pipelines.

Grayscale (PS3.3 C.11, figure C.11-1): stored values -> Modality LUT (C.11.1:
Rescale Slope / Intercept or the Modality LUT Sequence) -> VOI LUT (C.11.2: a
window with the LINEAR, LINEAR_EXACT or SIGMOID function of C.11.2.1.2 / C.11.2.1.3,
or a VOI LUT Sequence) -> Presentation LUT (C.11.6: MONOCHROME1 and Presentation LUT
Shape INVERSE invert the P-values *after* the VOI LUT) -> 0-255.

The transforms are pydicom's (:func:`~pydicom.pixels.apply_modality_lut`,
:func:`~pydicom.pixels.apply_windowing`, :func:`~pydicom.pixels.apply_voi`). They
are run once per distinct stored value, not once per pixel: the chain is evaluated
over ``min..max`` of the frame into an 8-bit lookup table, which is then indexed by
the frame (what DCMTK does too). ``bench/render_pipeline.py`` measures the two ways.

Colour (C.7.6.3.1.2): RGB and YBR arrive as RGB from the decoder; PALETTE COLOR goes
through :func:`~pydicom.pixels.apply_color_lut` (C.7.6.3.1.5); then each channel is
scaled from its bit depth to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
)

from viewer.errors import RenderError

VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
VOI_FUNCTIONS: tuple[str, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
LUT_LIMIT = 1 << 20  # frames whose value range is wider are transformed pixel by pixel

# The attributes of the Modality, VOI and Presentation LUT modules (and the pixel
# description they depend on) that a frame's transforms read.
_LUT_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PresentationLUTShape",
    "WindowCenterWidthExplanation",
)
# Enhanced multi-frame objects keep them in functional groups (PS3.3 C.7.6.16.2.9/10).
_FUNCTIONAL_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


@dataclass(frozen=True)
class Voi:
    """The VOI transform chosen for a frame: a window, or the file's VOI LUT Sequence."""

    center: float = 0.0
    width: float = 1.0
    function: VoiFunction = "LINEAR"
    use_lut_sequence: bool = False
    label: str = ""  # where it came from: explicit, a preset name, file, auto

    def describe(self) -> str:
        if self.use_lut_sequence:
            return "VOI LUT"
        return f"C {self.center:g} W {self.width:g}"


def frame_attributes(ds: Dataset, index: int) -> Dataset:
    """The LUT-related attributes that apply to frame ``index`` (0-based).

    Top-level attributes first, overridden by the Shared and then the Per-Frame
    Functional Groups of enhanced objects (PS3.3 C.7.6.16). The result is a small
    Dataset the pydicom transforms can be given.
    """
    out = Dataset()
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta  # the endianness of OW LUT Data
    out.set_original_encoding(*ds.original_encoding)
    for keyword in _LUT_KEYWORDS:
        if keyword in ds:
            out[keyword] = ds[keyword]
    for group in _functional_groups(ds, index):
        for name in _FUNCTIONAL_GROUPS:
            for item in group.get(name) or []:
                for element in item:
                    if element.keyword in _LUT_KEYWORDS:
                        out[element.tag] = element
    return out


def _functional_groups(ds: Dataset, index: int) -> list[Dataset]:
    groups: list[Dataset] = list(ds.get("SharedFunctionalGroupsSequence") or [])[:1]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if index < len(per_frame):
        groups.append(per_frame[index])
    return groups


def file_voi(attrs: Dataset) -> Voi | None:
    """The file's default VOI (PS3.3 C.11.2): its first valid window, else its first
    VOI LUT Sequence item, else ``None``."""
    window = _first_window(attrs)
    if window is not None:
        return window
    if attrs.get("VOILUTSequence"):
        return Voi(use_lut_sequence=True, label="file")
    return None


def _first_window(attrs: Dataset) -> Voi | None:
    if "WindowCenter" not in attrs or "WindowWidth" not in attrs:
        return None
    try:
        center = float(_first(attrs["WindowCenter"].value))
        width = float(_first(attrs["WindowWidth"].value))
    except (TypeError, ValueError, IndexError):
        return None
    function = str(attrs.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS:
        function = "LINEAR"
    if width <= 0 or (function == "LINEAR" and width < 1):
        return None  # an invalid window in the file: fall back to the next choice
    return Voi(center, width, cast(VoiFunction, function), label="file")


def _first(value: Any) -> Any:
    """The first value of a multi-valued element (Window Center may have several)."""
    if isinstance(value, MultiValue | list | tuple):
        return value[0]
    return value


def check_window(center: float, width: float, function: str) -> Voi:
    """A requested window, checked against PS3.3 C.11.2.1.2 / C.11.2.1.3."""
    name = function.strip().upper()
    if name not in VOI_FUNCTIONS:
        raise RenderError(f"unknown VOI LUT function {function!r}: one of {VOI_FUNCTIONS}")
    if not (np.isfinite(center) and np.isfinite(width)):
        raise RenderError("window center and width must be finite numbers")
    if width <= 0:
        raise RenderError(f"window width must be > 0, not {width:g}")
    if name == "LINEAR" and width < 1:
        raise RenderError(f"a LINEAR window's width must be >= 1 (PS3.3 C.11.2.1.2), not {width:g}")
    return Voi(center, width, cast(VoiFunction, name), label="explicit")


def inverts(attrs: Dataset) -> bool:
    """Whether the lowest P-value is white, decided after the VOI LUT (PS3.3 C.11.6).

    Presentation LUT Shape (2050,0020), when present, decides: INVERSE inverts,
    IDENTITY does not (its output is P-values; the DX, MG and IO modules pair INVERSE
    with MONOCHROME1, so the two together are one inversion, never two). Without it,
    MONOCHROME1 inverts (C.7.6.3.1.2: the minimum sample is white after the VOI
    transformations). DCMTK's dcmj2pnm reads the two attributes the same way.
    """
    shape = str(attrs.get("PresentationLUTShape") or "").strip().upper()
    if shape in ("INVERSE", "IDENTITY"):
        return shape == "INVERSE"
    photometric = str(attrs.get("PhotometricInterpretation", "")).strip().upper()
    return photometric == "MONOCHROME1"


def padding_mask(ds: Dataset, frame: np.ndarray) -> np.ndarray | None:
    """Pixels that are Pixel Padding Value (PS3.3 C.7.5.1.1.2), or ``None``."""
    if "PixelPaddingValue" not in ds or frame.dtype.kind not in "iu":
        return None
    try:
        first = int(ds.PixelPaddingValue)
        last = int(ds.get("PixelPaddingRangeLimit", first))
    except (TypeError, ValueError):
        return None
    low, high = min(first, last), max(first, last)
    mask = (frame >= low) & (frame <= high)
    return mask if mask.any() and not mask.all() else None


def auto_voi(attrs: Dataset, values: np.ndarray) -> Voi:
    """The automatic window: the min-max of the Modality LUT output of ``values`` (the
    stored values that count, padding left out, or just their extremes), as
    LINEAR_EXACT: the minimum is black and the maximum white, DCMTK's ``+Wm``."""
    if values.dtype.kind in "iu":
        low, high = int(values.min()), int(values.max())
        if high - low <= LUT_LIMIT:
            values = np.arange(low, high + 1, dtype=np.int64)
    modality = apply_modality_lut(values, attrs)
    low_m, high_m = float(np.min(modality)), float(np.max(modality))
    width = high_m - low_m
    if not width > 0:
        return Voi(low_m, 1.0, "LINEAR_EXACT", label="auto")
    return Voi((low_m + high_m) / 2, width, "LINEAR_EXACT", label="auto")


def grey_to_8bit(frame: np.ndarray, attrs: Dataset, voi: Voi) -> np.ndarray:
    """Modality LUT, VOI and Presentation LUT of one grayscale frame, as ``uint8``.

    Integer frames go through a lookup table built over the frame's value range.
    """
    if frame.dtype.kind in "iu" and frame.size:
        low, high = int(frame.min()), int(frame.max())
        if high - low <= LUT_LIMIT:
            domain = np.arange(low, high + 1, dtype=np.int64)
            table = display_values(domain, attrs, voi)
            index = frame.astype(np.intp, copy=True)
            index -= low
            return np.take(table, index)
    return display_values(frame, attrs, voi)


def display_values(values: np.ndarray, attrs: Dataset, voi: Voi) -> np.ndarray:
    """The display (P-) value 0-255 of each stored value in ``values``."""
    modality = apply_modality_lut(values, attrs)
    scaled: np.ndarray
    if voi.use_lut_sequence:
        scaled = _voi_lut_sequence(modality, attrs)
    else:
        scaled = window(modality, voi.center, voi.width, voi.function)
    if inverts(attrs):
        scaled = 255.0 - scaled
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def window(values: np.ndarray, center: float, width: float, function: VoiFunction) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID)
    onto the output range 0-255, as ``float64`` (pydicom's apply_windowing)."""
    spec = Dataset()
    spec.PhotometricInterpretation = "MONOCHROME2"
    spec.BitsStored = 8  # output range y_min..y_max = 0..255
    spec.PixelRepresentation = 0
    # FD, not DS: any float goes in unchanged (DS allows 16 characters)
    spec.add_new(0x00281050, "FD", float(center))  # Window Center
    spec.add_new(0x00281051, "FD", float(width))  # Window Width
    spec.VOILUTFunction = function
    try:
        return apply_windowing(np.asarray(values, dtype=np.float64), spec)
    except ValueError as exc:
        raise RenderError(str(exc)) from exc


def _voi_lut_sequence(values: np.ndarray, attrs: Dataset) -> np.ndarray:
    """The first VOI LUT Sequence item (C.11.2.1.1), its output scaled to 0-255."""
    item = attrs.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2])
    try:
        out = apply_voi(np.rint(values).astype(np.int64), attrs, index=0)
    except (NotImplementedError, ValueError, AttributeError) as exc:
        raise RenderError(f"the file's VOI LUT Sequence cannot be applied: {exc}") from exc
    return out.astype(np.float64) * (255.0 / float((1 << bits) - 1))


def colour_to_8bit(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """An RGB ``uint8`` (rows, columns, 3) array for a colour frame (C.7.6.3.1.2)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(frame, ds)
        except (ValueError, AttributeError, KeyError, IndexError) as exc:
            raise RenderError(f"the palette colour lookup tables are unusable: {exc}") from exc
        return _to_8bit(rgb, _palette_bits(ds))
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise RenderError(f"unsupported photometric interpretation {photometric!r}")
    return _to_8bit(frame, int(ds.get("BitsStored") or frame.dtype.itemsize * 8))


def _palette_bits(ds: Dataset) -> int:
    """Bits per entry of the red palette LUT (its LUT Descriptor's third value)."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if descriptor is None:  # segmented or enhanced palettes: pydicom's output dtype
        return 16
    return 16 if int(descriptor[2]) > 8 else 8


def _to_8bit(rgb: np.ndarray, bits: int) -> np.ndarray:
    """Scale samples of ``bits`` bits to 0-255 (round to nearest)."""
    if rgb.dtype == np.uint8 and bits <= 8:
        return rgb
    top = float((1 << bits) - 1)
    scaled = np.rint(rgb.astype(np.float32) * np.float32(255.0 / top))
    out: np.ndarray = np.clip(scaled, 0, 255).astype(np.uint8)
    return out
