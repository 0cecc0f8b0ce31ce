"""The rendering pipeline (viewer/render.py) against a reference nobody here wrote.

Each pair renders a pydicom test file (or a sample) as PNG with no viewport and the
same window as DCMTK's ``dcmj2pnm`` (``dcml2pnm`` for JPEG-LS, which Debian's
dcmj2pnm cannot decode), and asks for: the same size, a mean absolute difference of
at most 2 grey levels per channel, a strongly positive correlation (nothing
inverted) and almost no pixel more than 32 levels off (nothing clipped or
colour-swapped). Debian's DCMTK has no JPEG 2000 decoder, so a JPEG 2000 file is
compared with DCMTK's rendering of its uncompressed twin from pydicom-data (lossless
``*_J2KR``; the lossy ``*_J2KI`` twins are the same decoded pixels), or of a copy
pydicom decompressed (the sample XA).

Then unit tests of what DCMTK cannot check: the VOI formulas of PS3.3 C.11.2.1.2,
inversion order, presets, the automatic window, geometry, bad parameters, corrupt
data, cine GIFs and burned-in Unicode text.
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import GifImagePlugin, Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    generate_uid,
)

from tests.conftest import ROOT, SAMPLES, require_tool
from viewer import annotate, lut, pixels
from viewer.presets import PRESETS
from viewer.render import (
    RenderError,
    RenderParams,
    UndecodablePixels,
    Window,
    render,
)

CT_SLICE = SAMPLES / "ct_chest" / "series1" / "001.dcm"
MR_JPEG_LS = SAMPLES / "mr_brain" / "series1" / "001.dcm"
XA_CINE = SAMPLES / "xa_coronary" / "series1" / "001.dcm"
MAX_MEAN_DIFF = 2.0
FAR = 32  # a pixel this far off is in the wrong class
MAX_FAR_FRACTION = 0.001
MIN_CORRELATION = 0.98


def data_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is missing: install pydicom-data (make test)")
    return Path(path)


def decode_image(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def open_gif(body: bytes) -> GifImagePlugin.GifImageFile:
    image = Image.open(io.BytesIO(body))
    assert isinstance(image, GifImagePlugin.GifImageFile)
    return image


def ours(path: Path, **kwargs: Any) -> np.ndarray:
    """Our PNG rendering, full size."""
    return decode_image(render(path, RenderParams(media_type="image/png", **kwargs)).body)


def dcmtk(path: Path, args: list[str], out_dir: Path, tool: str = "dcmj2pnm") -> np.ndarray:
    """DCMTK's 8-bit PNG rendering (overlays off: we do not burn them in)."""
    out = out_dir / f"{path.stem}.png"
    done = subprocess.run(
        [require_tool(tool), "+on", "-O", *args, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{tool} {' '.join(args)} {path.name}: {done.stderr}"
    return np.asarray(Image.open(out))


def assert_same_picture(mine: np.ndarray, reference: np.ndarray) -> None:
    assert mine.shape == reference.shape
    diff = np.abs(mine.astype(np.int32) - reference.astype(np.int32))
    assert diff.mean() <= MAX_MEAN_DIFF, f"mean difference {diff.mean():.2f} grey levels"
    far = float(np.mean(diff > FAR))
    assert far <= MAX_FAR_FRACTION, f"{far:.2%} of the pixels are more than {FAR} levels off"
    if reference.std() > 0 and mine.std() > 0:
        correlation = np.corrcoef(mine.ravel(), reference.ravel())[0, 1]
        assert correlation >= MIN_CORRELATION, f"correlation {correlation:.3f}"


# --- pairs with DCMTK --------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One file rendered by us (``params``) and by DCMTK (``args``)."""

    ours: str  # pydicom test file name, or a path under sample_dicom/
    args: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None  # another file for DCMTK (an uncompressed twin)
    tool: str = "dcmj2pnm"

    def path(self, name: str) -> Path:
        return ROOT / name if name.startswith("sample_dicom/") else data_file(name)


def window(center: float, width: float, function: str = "LINEAR") -> dict[str, Any]:
    return {"window": Window(center, width, function)}  # type: ignore[arg-type]


FILE_WINDOW = ("+Wi", "1")  # the file's first window = our default when it has one
MIN_MAX = ("+Wm",)  # the min-max window = our automatic window

PAIRS = {
    # grayscale, uncompressed
    "ct-signed-explicit": Pair("CT_small.dcm", ("+Ww", "40", "400"), window(40, 400)),
    "ct-signed-auto": Pair("CT_small.dcm", MIN_MAX),
    "ct-14bit-file-window": Pair("693_UNCR.dcm", FILE_WINDOW),
    "mr-file-window": Pair("MR_small.dcm", FILE_WINDOW),
    "mr-explicit": Pair("MR_small.dcm", ("+Ww", "500", "1000"), window(500, 1000)),
    "mr-sigmoid": Pair(
        "MR_small.dcm", ("+Ww", "500", "1000", "+Wfs"), window(500, 1000, "SIGMOID")
    ),
    "mr-big-endian": Pair("MR_small_bigendian.dcm", FILE_WINDOW),
    "mr-two-windows-first": Pair("MR-SIEMENS-DICOM-WithOverlays.dcm", FILE_WINDOW),
    "monochrome1-file-window": Pair("RG3_UNCR.dcm", FILE_WINDOW),
    "monochrome1-explicit": Pair("RG3_UNCR.dcm", ("+Ww", "500", "800"), window(500, 800)),
    "voi-lut-sequence": Pair("vlut_04.dcm", ("+Wl", "1")),
    "modality-lut-sequence": Pair("mlut_18.dcm", MIN_MAX),
    "enhanced-ct-functional-groups": Pair(
        "eCT_Supplemental.dcm", ("+Ww", "49", "102"), window(49, 102)
    ),
    "1-bit": Pair("liver_1frame.dcm", MIN_MAX),
    "32-bit": Pair("rtdose_1frame.dcm", MIN_MAX),
    "deflated": Pair("image_dfl.dcm", MIN_MAX),
    "sample-ct-file-window": Pair("sample_dicom/ct_chest/series1/001.dcm", FILE_WINDOW),
    # colour
    "rgb": Pair("SC_rgb.dcm"),
    "rgb-16bit": Pair("SC_rgb_16bit.dcm"),
    "rgb-planar-big-endian": Pair("ExplVR_BigEnd.dcm"),
    "rgb-planar": Pair("color-pl.dcm"),
    "ybr-full": Pair("SC_ybr_full_uncompressed.dcm"),
    "ybr-full-422": Pair("SC_ybr_full_422_uncompressed.dcm"),
    "palette-8bit": Pair("OBXXXX1A.dcm"),
    "palette-16bit-entries": Pair("examples_palette.dcm"),
    # multi-frame
    "multiframe-auto": Pair("emri_small.dcm", ("+Wm", "+F", "5"), {"frame": 5}),
    "multiframe-explicit": Pair(
        "emri_small.dcm", ("+Ww", "300", "600", "+F", "3"), {"frame": 3, **window(300, 600)}
    ),
    "multiframe-rgb": Pair("SC_rgb_2frame.dcm", ("+F", "2"), {"frame": 2}),
    # JPEG
    "jpeg-extended-12bit": Pair("JPGExtended.dcm", MIN_MAX),
    "jpeg-lossless": Pair("JPEG-LL.dcm", MIN_MAX),
    "jpeg-lossless-sv1-file-window": Pair("JPGLosslessP14SV1_1s_1f_8b.dcm", FILE_WINDOW),
    "jpeg-baseline-ybr-full": Pair("SC_rgb_jpeg_dcmtk.dcm"),
    "jpeg-baseline-ybr-422": Pair("SC_rgb_dcmtk_+eb+cy+s2.dcm"),
    "jpeg-baseline-rgb": Pair("SC_jpeg_no_color_transform.dcm"),
    "jpeg-baseline-multiframe": Pair("examples_ybr_color.dcm", ("+F", "7"), {"frame": 7}),
    # JPEG-LS (Debian's dcmj2pnm has no JPEG-LS decoder; dcml2pnm has)
    "jpeg-ls-file-window": Pair("MR_small_jpeg_ls_lossless.dcm", FILE_WINDOW, tool="dcml2pnm"),
    "jpeg-ls-lossy-rgb": Pair("SC_rgb_jls_lossy_line.dcm", tool="dcml2pnm"),
    "jpeg-ls-multiframe": Pair(
        "emri_small_jpeg_ls_lossless.dcm", ("+Wm", "+F", "2"), {"frame": 2}, tool="dcml2pnm"
    ),
    "sample-mr-jpeg-ls": Pair(
        "sample_dicom/mr_brain/series1/001.dcm", FILE_WINDOW, tool="dcml2pnm"
    ),
    # RLE
    "rle-file-window": Pair("MR_small_RLE.dcm", FILE_WINDOW),
    "rle-rgb": Pair("SC_rgb_rle.dcm"),
    "rle-palette": Pair("OBXXXX1A_rle.dcm"),
    "rle-multiframe": Pair("emri_small_RLE.dcm", ("+Wm", "+F", "4"), {"frame": 4}),
    # JPEG 2000, against DCMTK's rendering of the uncompressed twin
    "j2k-lossless-ct": Pair("693_J2KR.dcm", FILE_WINDOW, reference="693_UNCR.dcm"),
    "j2k-lossless-ct-explicit": Pair(
        "693_J2KR.dcm", ("+Ww", "-600", "1500"), window(-600, 1500), reference="693_UNCR.dcm"
    ),
    "j2k-lossy-monochrome1": Pair("RG3_J2KI.dcm", FILE_WINDOW, reference="RG3_UNCI.dcm"),
    "j2k-lossy-ybr-ict": Pair("US1_J2KI.dcm", reference="US1_UNCI.dcm"),
    "j2k-multiframe": Pair(
        "emri_small_jpeg_2k_lossless.dcm", ("+Wm", "+F", "6"), {"frame": 6}, "emri_small.dcm"
    ),
}


@pytest.mark.parametrize("pair", PAIRS.values(), ids=PAIRS.keys())
def test_matches_dcmtk(pair: Pair, tmp_path: Path) -> None:
    mine = ours(pair.path(pair.ours), **pair.params)
    reference_file = pair.path(pair.reference or pair.ours)
    assert_same_picture(mine, dcmtk(reference_file, list(pair.args), tmp_path, pair.tool))


def test_j2k_sample_cine_frame_matches_dcmtk_of_pydicom_decompressed_copy(tmp_path: Path) -> None:
    """The sample XA is JPEG 2000: DCMTK renders a copy pydicom decompressed."""
    ds = dcmread(XA_CINE)
    ds.decompress()
    copy = tmp_path / "xa-uncompressed.dcm"
    ds.save_as(copy)
    for frame in (1, 17):
        reference = dcmtk(copy, [*FILE_WINDOW, "+F", str(frame)], tmp_path)
        assert_same_picture(ours(XA_CINE, frame=frame), reference)


INVERSION_CASES = {
    "monochrome1": ("MONOCHROME1", None),
    "monochrome2-inverse-shape": ("MONOCHROME2", "INVERSE"),
    "monochrome1-inverse-shape-once": ("MONOCHROME1", "INVERSE"),
    "monochrome1-identity-shape": ("MONOCHROME1", "IDENTITY"),
}


@pytest.mark.parametrize("case", INVERSION_CASES.values(), ids=INVERSION_CASES.keys())
def test_inversion_matches_dcmtk(case: tuple[str, str | None], tmp_path: Path) -> None:
    """MONOCHROME1 and Presentation LUT Shape, read the way DCMTK reads them."""
    photometric, shape = case
    ds = dcmread(data_file("MR_small.dcm"))
    ds.PhotometricInterpretation = photometric
    if shape is not None:
        ds.PresentationLUTShape = shape
    path = tmp_path / "modified.dcm"
    ds.save_as(path)
    for args, params in ((FILE_WINDOW, {}), (("+Ww", "700", "900"), window(700, 900))):
        assert_same_picture(ours(path, **params), dcmtk(path, list(args), tmp_path))


# --- VOI LUT functions, PS3.3 C.11.2.1.2 / C.11.2.1.3 ------------------------------------


def standard_linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, output range 0..255 (w = 1: a step, nothing in between)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, y)
    return np.where(x > c - 0.5 + (w - 1) / 2, 255, y)


def standard_linear_exact(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2."""
    y = ((x - c) / w + 0.5) * 255
    y = np.where(x <= c - w / 2, 0, y)
    return np.where(x > c + w / 2, 255, y)


def standard_sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1."""
    return 255 / (1 + np.exp(-4 * (x - c) / w))


@pytest.mark.parametrize(
    ("function", "formula"),
    [
        ("LINEAR", standard_linear),
        ("LINEAR_EXACT", standard_linear_exact),
        ("SIGMOID", standard_sigmoid),
    ],
)
@pytest.mark.parametrize(("center", "width"), [(40, 80), (-600, 1500), (0.5, 2), (100, 1)])
def test_voi_function_formulas(
    function: str, formula: Callable[..., np.ndarray], center: float, width: float
) -> None:
    x = np.linspace(center - width, center + width, 2001)
    got = lut.window(x, center, width, function)  # type: ignore[arg-type]
    assert np.allclose(got, formula(x, center, width), atol=1e-9)


def test_voi_functions_differ_where_the_standard_says() -> None:
    """At the window's edges LINEAR is already 0 / 255 half a unit earlier than
    LINEAR_EXACT, and SIGMOID never reaches either."""
    x = np.array([0.0, 1.0, 40.0, 79.0, 80.0])
    linear = lut.window(x, 40, 80, "LINEAR")
    exact = lut.window(x, 40, 80, "LINEAR_EXACT")
    sigmoid = lut.window(x, 40, 80, "SIGMOID")
    assert linear[0] == exact[0] == 0 and linear[-1] == exact[-1] == 255
    assert linear[1] > exact[1] and linear[3] == 255 > exact[3]
    assert exact[2] == 127.5 and sigmoid[2] == 127.5
    assert 0 < sigmoid[0] < sigmoid[-1] < 255


def test_sigmoid_and_linear_exact_render_differently() -> None:
    ct = data_file("CT_small.dcm")
    images = {f: ours(ct, **window(40, 400, f)) for f in ("LINEAR", "LINEAR_EXACT", "SIGMOID")}
    assert np.abs(images["LINEAR"].astype(int) - images["LINEAR_EXACT"]).max() <= 1
    sigmoid_diff = np.abs(images["LINEAR"].astype(int) - images["SIGMOID"])
    assert sigmoid_diff.mean() > 2 and sigmoid_diff.max() > 20


# --- synthetic instances -----------------------------------------------------------------


def synthetic(
    pixels_: np.ndarray,
    *,
    bits_stored: int = 16,
    signed: bool = True,
    photometric: str = "MONOCHROME2",
    **attrs: Any,
) -> Dataset:
    """A one-frame grayscale CT instance holding ``pixels_``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName = "Nguyễn^Văn An"
    ds.PatientID = "VN-001"
    ds.StudyDate = "20240315"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Rows, ds.Columns = pixels_.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels_.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def save(ds: Dataset, folder: Path, name: str = "x.dcm") -> Path:
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.tile(np.arange(-1024, 1024, 8, dtype=np.int16), (16, 1))  # 16 x 256


def test_monochrome1_inverts_after_the_voi_lut(tmp_path: Path) -> None:
    """PS3.3 C.7.6.3.1.2: the *windowed* minimum is white. An asymmetric window shows
    the order: inverting the stored values first would move the window."""
    mono1 = save(synthetic(RAMP, photometric="MONOCHROME1"), tmp_path, "m1.dcm")
    mono2 = save(synthetic(RAMP), tmp_path, "m2.dcm")
    params = window(300, 500)
    after = 255 - ours(mono2, **params).astype(int)
    before = ours(save(synthetic(-RAMP), tmp_path, "neg.dcm"), **params)
    got = ours(mono1, **params)
    assert np.array_equal(got, after)
    assert np.abs(got.astype(int) - before).mean() > 50


def test_presets_are_windows_in_hounsfield_units(tmp_path: Path) -> None:
    """A preset is applied after Rescale Slope/Intercept, like the same explicit window."""
    stored = RAMP + 1024  # stored values 0..2040, HU = stored - 1024
    path = save(
        synthetic(stored, RescaleIntercept=-1024, RescaleSlope=1), tmp_path, "ct-rescaled.dcm"
    )
    for name, value in PRESETS.items():
        explicit = ours(path, **window(value.center, value.width))
        assert np.array_equal(ours(path, preset=name), explicit), name
    lung = ours(path, preset="LUNG ")
    hu = RAMP[0].astype(float)
    expected = standard_linear(hu, -600, 1500)
    assert np.abs(lung[0].astype(float) - expected).max() <= 0.5


def test_explicit_window_wins_over_preset_and_unknown_preset_is_an_error() -> None:
    ct = data_file("CT_small.dcm")
    both = ours(ct, preset="lung", **window(40, 400))
    assert np.array_equal(both, ours(ct, **window(40, 400)))
    with pytest.raises(RenderError, match="unknown preset"):
        render(ct, RenderParams(preset="kidney"))


def test_readme_lists_the_presets() -> None:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Rendering presets")[-1]
    for name, value in PRESETS.items():
        row = re.search(rf"^\|\s*`?{name}`?\s*\|\s*(-?\d+)\s*\|\s*(\d+)\s*\|", section, re.M)
        assert row, f"README has no row for preset {name}"
        assert (float(row[1]), float(row[2])) == (value.center, value.width)


def test_default_is_the_files_window_not_the_full_range() -> None:
    """What a radiologist expects (FIELD-NOTES): not Orthanc's min-max stretch."""
    ds = dcmread(CT_SLICE)
    first = Window(float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    default = ours(CT_SLICE)
    assert np.array_equal(default, ours(CT_SLICE, window=first))
    assert not np.array_equal(default, ours(CT_SLICE, window=Window(-600, 1500)))


def test_auto_window_is_min_max_without_padding(tmp_path: Path) -> None:
    image = RAMP.copy()
    image[:, :8] = -2000  # outside the field of view
    plain = ours(save(synthetic(RAMP), tmp_path, "plain.dcm"))
    assert plain.min() == 0 and plain.max() == 255
    assert np.array_equal(plain[:, 0], np.zeros(16)) and np.array_equal(plain[:, -1], [255] * 16)
    padded = ours(save(synthetic(image, PixelPaddingValue=-2000), tmp_path, "padded.dcm"))
    assert not padded[:, :9].any()  # padding and the lowest real value: black
    assert (padded[:, -1] == 255).all()
    unpadded = ours(save(synthetic(image), tmp_path, "unpadded.dcm"))
    assert unpadded[:, 8].min() > 20  # counting the padding would squeeze the range


def test_invalid_window_in_the_file_falls_back_to_auto(tmp_path: Path) -> None:
    path = save(synthetic(RAMP, WindowCenter=0, WindowWidth=0), tmp_path)
    assert np.array_equal(ours(path), ours(save(synthetic(RAMP), tmp_path, "none.dcm")))


@pytest.mark.parametrize("width", [0, -10, 0.5])
def test_window_width_must_be_positive(width: float) -> None:
    with pytest.raises(RenderError, match="width"):
        render(data_file("CT_small.dcm"), RenderParams(window=Window(40, width)))


def test_linear_exact_accepts_a_width_below_one() -> None:
    ours(data_file("CT_small.dcm"), window=Window(40, 0.5, "LINEAR_EXACT"))


def test_bits_stored_masking_and_sign_extension(tmp_path: Path) -> None:
    """PS3.5 8.1.1: bits above High Bit are not pixel data; signed 12-bit values are
    sign-extended from bit 11."""
    clean = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))
    dirty = clean | 0xA000  # garbage in the 4 unused high bits
    unsigned = [
        ours(save(synthetic(a, bits_stored=12, signed=False), tmp_path, f"u{i}.dcm"))
        for i, a in enumerate((clean, dirty))
    ]
    assert np.array_equal(unsigned[0], unsigned[1])
    signed_values = clean.astype(np.int16) - 2048  # -2048..2032 in 12 bits
    raw_twelve_bits = (signed_values.astype(np.uint16) & 0x0FFF).astype(np.int16)
    signed = ours(save(synthetic(raw_twelve_bits, bits_stored=12), tmp_path, "s.dcm"))
    reference = ours(save(synthetic(signed_values), tmp_path, "s16.dcm"))
    assert np.array_equal(signed, reference)


# --- geometry ----------------------------------------------------------------------------


def test_viewport_keeps_the_aspect_ratio() -> None:
    tall = data_file("JPEG-LL.dcm")  # 1024 rows x 256 columns
    small = decode_image(render(tall, RenderParams(viewport=(128, 128))).body)
    assert small.shape == (128, 32)
    wide_box = decode_image(render(tall, RenderParams(viewport=(2048, 64))).body)
    assert wide_box.shape == (64, 16)
    up = decode_image(render(data_file("MR_small.dcm"), RenderParams(viewport=(200, 100))).body)
    assert up.shape == (100, 100)


def test_viewport_is_capped_and_must_be_positive() -> None:
    tall = data_file("JPEG-LL.dcm")
    huge = decode_image(render(tall, RenderParams(viewport=(10**6, 10**6))).body)
    assert huge.shape == (4096, 1024)
    for bad in ((0, 100), (100, -1)):
        with pytest.raises(RenderError, match="viewport"):
            render(tall, RenderParams(viewport=bad))


def test_region_crops_before_scaling() -> None:
    ct = data_file("CT_small.dcm")  # 128 x 128
    full = ours(ct)
    quarter = ours(ct, region=(0.0, 0.0, 0.5, 0.5))
    assert np.array_equal(quarter, full[:64, :64])
    right = ours(ct, region=(0.75, 0.25, 1.0, 0.5))
    assert np.array_equal(right, full[32:64, 96:128])
    rect = ours(ct, source_rect=(10, 20, 30, 40))
    assert np.array_equal(rect, full[20:60, 10:40])
    scaled = ours(ct, region=(0.0, 0.0, 0.5, 0.5), viewport=(32, 32))
    assert scaled.shape == (32, 32)
    for bad in ((0.5, 0.0, 0.5, 1.0), (0.0, 0.0, 1.5, 1.0), (-0.1, 0.0, 1.0, 1.0)):
        with pytest.raises(RenderError, match="region"):
            ours(ct, region=bad)
    with pytest.raises(RenderError, match="source rectangle"):
        ours(ct, source_rect=(100, 0, 50, 10))


# --- frames, media types, bad input ------------------------------------------------------


@pytest.mark.parametrize(("name", "frame"), [("emri_small.dcm", 11), ("CT_small.dcm", 2)])
def test_frame_out_of_range(name: str, frame: int) -> None:
    with pytest.raises(RenderError, match="out of range"):
        render(data_file(name), RenderParams(frame=frame))
    with pytest.raises(RenderError, match="out of range"):
        render(data_file(name), RenderParams(frame=0))


def test_only_the_asked_frame_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real = pixels.pixel_array

    def spy(source: Any, **kwargs: Any) -> np.ndarray:
        seen.append(kwargs.get("index"))
        return real(source, **kwargs)

    monkeypatch.setattr(pixels, "pixel_array", spy)
    ours(XA_CINE, frame=30)
    assert seen == [29]


def test_large_multiframe_pixel_data_stays_on_disk(tmp_path: Path) -> None:
    frames = np.stack([np.full((128, 128), i * 100, dtype=np.uint16) for i in range(160)])
    ds = synthetic(frames[0], signed=False, bits_stored=16)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = frames.tobytes()  # 5 MB > DEFER_BYTES
    path = save(ds, tmp_path)
    assert pixels.open_instance(path).deferred
    last = ours(path, frame=160, **window(8000, 16000, "LINEAR_EXACT"))
    assert np.unique(last).tolist() == [round((15900 - 8000) / 16000 * 255 + 127.5)]
    cine = render(path, RenderParams(media_type="image/gif", all_frames=True, viewport=(32, 32)))
    gif = open_gif(cine.body)
    assert gif.n_frames == 160
    gif.seek(159)
    assert np.asarray(gif.convert("L")).min() == 255  # auto window over all frames


def test_media_types_and_quality() -> None:
    ct = data_file("CT_small.dcm")
    formats = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}
    for media_type, pil_format in formats.items():
        image = render(ct, RenderParams(media_type=media_type))  # type: ignore[arg-type]
        assert image.media_type == media_type
        assert Image.open(io.BytesIO(image.body)).format == pil_format
    low = render(ct, RenderParams(quality=10)).body
    high = render(ct, RenderParams(quality=95)).body
    assert len(low) < len(high)
    render(ct, RenderParams(media_type="image/png", quality=0))  # lossless: quality unused
    with pytest.raises(RenderError, match="quality"):
        render(ct, RenderParams(quality=0))
    with pytest.raises(RenderError, match="media type"):
        render(ct, RenderParams(media_type="image/tiff"))  # type: ignore[arg-type]


def test_jpeg_default_is_close_to_the_png() -> None:
    jpeg = decode_image(render(CT_SLICE, RenderParams()).body)
    assert np.abs(jpeg.astype(int) - ours(CT_SLICE)).mean() < 2


def corrupt_j2k(tmp_path: Path) -> Path:
    ds = dcmread(data_file("MR_small_jp2klossless.dcm"))
    frame = next(generate_fragmented_frames(ds.PixelData))[0]
    broken = bytearray(frame)
    broken[len(broken) // 3 :] = bytes(len(broken) - len(broken) // 3)  # zeroed codestream
    ds.PixelData = encapsulate([bytes(broken[: len(broken) // 2])])
    return save(ds, tmp_path, "corrupt-j2k.dcm")


def test_corrupt_jpeg2000_is_undecodable(tmp_path: Path) -> None:
    with pytest.raises(UndecodablePixels, match=r"JPEG 2000.*cannot be decoded"):
        render(corrupt_j2k(tmp_path), RenderParams())


def test_jpeg_pydicom_plugins_cannot_decode_is_undecodable() -> None:
    """pydicom's JPEG-lossy.dcm has a scan header pylibjpeg-libjpeg rejects (DCMTK
    accepts it): a 422, not a crash."""
    with pytest.raises(UndecodablePixels, match="JPEG Extended"):
        render(data_file("JPEG-lossy.dcm"), RenderParams())


def test_not_dicom_truncated_and_no_pixels(tmp_path: Path) -> None:
    with pytest.raises(UndecodablePixels, match="cannot be decoded"):
        render(data_file("MR_truncated.dcm"), RenderParams())  # pixel data cut short
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 10 + b"not a dicom file" * 20)
    with pytest.raises(UndecodablePixels):
        render(junk, RenderParams())
    ds = synthetic(RAMP)
    del ds.PixelData
    with pytest.raises(RenderError, match="no pixel data"):
        render(save(ds, tmp_path, "nopixels.dcm"), RenderParams())


def test_htj2k_transfer_syntax_is_decoded(tmp_path: Path) -> None:
    """No HTJ2K file is in pydicom-data and nothing here encodes HTJ2K; a Part 1
    codestream is valid HTJ2K (Part 15 decoders read Part 1), so this checks the
    HTJ2K transfer syntax is routed to a decoder, not the HT block coder itself."""
    ds = dcmread(data_file("693_J2KR.dcm"))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    path = save(ds, tmp_path, "htj2k.dcm")
    assert np.array_equal(ours(path), ours(data_file("693_J2KR.dcm")))


# --- cine and annotation -----------------------------------------------------------------


def test_gif_cine_has_every_frame_timed_by_frame_time() -> None:
    body = render(XA_CINE, RenderParams(media_type="image/gif", all_frames=True)).body
    gif = open_gif(body)
    assert gif.n_frames == int(dcmread(XA_CINE, stop_before_pixels=True).NumberOfFrames)
    assert gif.info["duration"] in (60, 70)  # Frame Time 66.67 ms, GIF counts in 10 ms
    assert gif.info["loop"] == 0


def test_gif_cine_without_timing_and_cine_only_as_gif() -> None:
    emri = data_file("emri_small.dcm")  # 10 frames, no Frame Time
    gif = open_gif(render(emri, RenderParams(media_type="image/gif", all_frames=True)).body)
    assert gif.n_frames == 10 and gif.info["duration"] == 100
    with pytest.raises(RenderError, match="gif"):
        render(emri, RenderParams(media_type="image/jpeg", all_frames=True))


def test_annotation_burns_in_vietnamese_text(tmp_path: Path) -> None:
    ds = synthetic(RAMP.repeat(16, axis=0), SliceLocation=-12.5, SliceThickness=1.25)
    path = save(ds, tmp_path)
    plain = ours(path)
    patient = ours(path, annotation=frozenset({"patient"}))
    both = ours(path, annotation=frozenset({"patient", "technique"}))
    assert patient.shape == plain.shape
    changed = patient != plain
    assert changed[:, : plain.shape[1] // 2].sum() > 100  # top-left corner
    assert not changed[:, plain.shape[1] * 3 // 4 :].any()
    assert (both != patient)[:, plain.shape[1] // 2 :].sum() > 50  # technique: top-right
    assert annotate.patient_lines(dcmread(path))[0] == "Nguyễn Văn An"
    info = annotate.FrameInfo(1, 1, "C 40 W 400")
    assert "Loc -12.5 mm" in annotate.technique_lines(dcmread(path), info)


def test_vietnamese_diacritics_are_drawn() -> None:
    """The font has the glyphs: 'Nguyễn' and 'Nguyen' do not draw the same pixels."""
    face = annotate.font(24)
    accented = np.asarray(face.getmask("Đặng Nguyễn"))
    plain = np.asarray(face.getmask("Dang Nguyen"))
    assert accented.shape != plain.shape or not np.array_equal(accented, plain)
    assert accented.sum() > plain.sum()


def test_render_params_are_still_frozen_and_hashable() -> None:
    params = RenderParams(annotation=frozenset({"patient"}))
    assert hash(params) == hash(replace(params))
