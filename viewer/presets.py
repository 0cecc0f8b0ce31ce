"""Named CT window presets: the ``preset=`` extension parameter of ``rendered``.

Each preset is a LINEAR VOI window (PS3.3 C.11.2.1.2) whose center and width are in
Hounsfield units, the output units of a CT's Modality LUT (PS3.3 C.11.1): a preset is
applied after Rescale Slope / Intercept, exactly like a window read from the file.
The values are the usual reading-room ones; the README's "Rendering presets" lists
them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import NamedTuple


class PresetWindow(NamedTuple):
    center: float  # HU
    width: float  # HU


PRESETS: MappingProxyType[str, PresetWindow] = MappingProxyType(
    {
        "lung": PresetWindow(-600, 1500),
        "mediastinum": PresetWindow(50, 350),
        "bone": PresetWindow(400, 1800),
        "brain": PresetWindow(40, 80),
        "stroke": PresetWindow(40, 40),
        "abdomen": PresetWindow(40, 400),
        "liver": PresetWindow(60, 160),
    }
)

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset(name: str) -> PresetWindow | None:
    """The window of preset ``name`` (case and surrounding blanks ignored), or ``None``."""
    return PRESETS.get(name.strip().lower())
