"""Burned-in text (DICOMweb ``annotation=patient,technique``, PS3.18 §8.3.5.1.4).

``patient``: name, ID and study date in the top-left corner. ``technique``: window,
frame n/N, slice location and thickness, modality in the top-right corner. White text
with a black drop shadow so it reads on any grey. Names are Unicode (Vietnamese among
them), so the font is a TrueType one that has those glyphs: DejaVu Sans when installed
(Debian ``fonts-dejavu-core``), else Pillow's own scalable default font.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
)
MIN_FONT_PX = 9
MARGIN_PX = 3
LINE_GAP_PX = 3

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class FrameInfo:
    """What the technique text says about the frame on show."""

    frame: int  # 1-based
    frames: int
    voi: str  # "C 40 W 400", "VOI LUT" or "" for colour


_fonts = threading.local()  # a FreeType face must not be used by two threads at once


def font(size: int) -> Font:
    """A Unicode TrueType font of ``size`` px (cached per size and thread)."""
    cache: dict[int, Font] = _fonts.__dict__.setdefault("by_size", {})
    if size not in cache:
        cache[size] = _load_font(size)
    return cache[size]


def _load_font(size: int) -> Font:
    for candidate in FONT_CANDIDATES:
        if candidate.is_file():
            try:
                return ImageFont.truetype(str(candidate), size)
            except OSError:
                continue
    return ImageFont.load_default(size)


def patient_lines(ds: Dataset) -> list[str]:
    """Patient name, ID and study date, as a reader would write them."""
    lines = [_person(ds.get("PatientName")), str(ds.get("PatientID") or "")]
    lines.append(_date(str(ds.get("StudyDate") or "")))
    return [line for line in lines if line]


def technique_lines(ds: Dataset, info: FrameInfo) -> list[str]:
    """Window, frame, slice location / thickness and modality."""
    lines = [info.voi]
    if info.frames > 1:
        lines.append(f"Frame {info.frame}/{info.frames}")
    location = _number(ds.get("SliceLocation"))
    if location is not None:
        lines.append(f"Loc {location:.1f} mm")
    thickness = _number(ds.get("SliceThickness"))
    if thickness is not None:
        lines.append(f"Thk {thickness:g} mm")
    modality = str(ds.get("Modality") or "")
    series = ds.get("SeriesNumber")
    instance = ds.get("InstanceNumber")
    if modality or series is not None:
        lines.append(" ".join(p for p in (modality, _numbered(series, instance)) if p))
    return [line for line in lines if line]


def _number(value: object) -> float | None:
    try:
        return None if value is None or value == "" else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _numbered(series: object, instance: object) -> str:
    if series is None:
        return ""
    return f"Se {series}" + (f" Im {instance}" if instance is not None else "")


def _person(value: object) -> str:
    if not value:
        return ""
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    parts = (name.family_name, name.given_name, name.middle_name)
    text = " ".join(p for p in parts if p)
    return text or str(name).replace("^", " ").strip()


def _date(text: str) -> str:
    text = text.strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[0:4]}-{text[4:6]}-{text[6:8]}"
    return text


def burn_in(image: Image.Image, ds: Dataset, what: Iterable[str], info: FrameInfo) -> Image.Image:
    """``image`` with the asked-for text drawn in its corners (a new image)."""
    asked = set(what)
    if not asked & {"patient", "technique"}:
        return image
    out = image.copy()
    size = max(MIN_FONT_PX, round(min(out.size) / 32))
    if "patient" in asked:
        _paste_block(out, text_mask("\n".join(patient_lines(ds)), size, "left"), right=False)
    if "technique" in asked:
        block = text_mask("\n".join(technique_lines(ds, info)), size, "right")
        _paste_block(out, block, right=True)
    return out


@functools.lru_cache(maxsize=512)
def text_mask(text: str, size: int, align: str) -> Image.Image:
    """Lines of white-on-black text as an "L" mask, cached (a series' patient block is
    the same on every slice). The image is only ever read."""
    face = font(size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox(
        (0, 0), text, font=face, align=align, spacing=LINE_GAP_PX
    )
    mask = Image.new("L", (max(1, math.ceil(right - left)), max(1, math.ceil(bottom - top))))
    ImageDraw.Draw(mask).multiline_text(
        (-left, -top), text, font=face, fill=255, align=align, spacing=LINE_GAP_PX
    )
    return mask


def _paste_block(image: Image.Image, mask: Image.Image, *, right: bool) -> None:
    """``mask`` in white with a 1 px black drop shadow (it reads on any grey; a stroked
    outline reads as well but costs 3x the time), in the top-left or top-right corner."""
    grey = image.mode == "L"
    white: int | tuple[int, int, int] = 255 if grey else (255, 255, 255)
    black: int | tuple[int, int, int] = 0 if grey else (0, 0, 0)
    x = image.width - MARGIN_PX - mask.width - 1 if right else MARGIN_PX
    image.paste(black, (x + 1, MARGIN_PX + 1), mask)
    image.paste(white, (x, MARGIN_PX), mask)
