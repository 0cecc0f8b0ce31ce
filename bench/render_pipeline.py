"""Where the time of one rendered 512x512 CT slice goes, stage by stage (no HTTP).

Run: ``.venv/bin/python bench/render_pipeline.py [--slices 20] [--repeat 200]``.

Uses the synthetic CT series of ``bench/ct_series.py`` (512x512 signed 16-bit,
Explicit VR Little Endian, generated once under ``bench/.cache``) and prints the
median and p95 milliseconds of each stage of :func:`viewer.render.render`, and of
the whole call for each media type, cycling over the slices so each call reads
another file (page cache warm, as on a busy server).

It also settles how the grayscale LUTs are run. pydicom's
``apply_modality_lut`` + ``apply_windowing`` applied to every pixel (float64, with
masks) is compared with the same pydicom functions evaluated once per distinct stored
value (the frame's min..max, a few thousand values for CT) into an 8-bit table that
the frame then indexes, which is what viewer/lut.py does. Both give identical bytes
(checked below).

Measured on the development machine (2 cores), ``--slices 20 --repeat 500``:

| stage                                              | p50 ms | p95 ms |
|----------------------------------------------------|-------:|-------:|
| parse: dcmread (whole file)                        |   0.34 |   0.42 |
| decode frame: pixel_array(ds, index=0)             |   0.09 |   0.11 |
| LUTs, pydicom per pixel (modality + windowing)     |   3.82 |   6.56 |
| LUTs, pydicom per value -> table (viewer/lut.py)   |   0.49 |   0.74 |
| JPEG encode q85 (Pillow)                           |   0.34 |   0.39 |
| render() image/jpeg, whole call                    |   1.99 |   2.93 |
| render() image/png                                 |   5.50 |   6.73 |
| render() image/webp                                |   9.10 |  11.95 |
| render() image/gif                                 |   3.99 |   4.48 |
| render() image/jpeg, 64 px thumbnail               |   1.75 |   4.92 |
| render() image/jpeg, with annotation               |   2.11 |   3.63 |

JPEG q85 bytes per slice: median 27,636. Whole-call p50 varies 1.7-2.0 ms between
runs on this machine.
(the table is refreshed by hand from this script's output)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from itertools import cycle
from pathlib import Path
from typing import Any

import bench_path  # noqa: F401 - before viewer: see bench/bench_path.py
import numpy as np
from ct_series import ensure_series
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_windowing
from pydicom.pixels.utils import pixel_array

from viewer import encode, lut
from viewer.render import RenderParams, Window, render

BENCH_DIR = Path(__file__).resolve().parent
WINDOW = Window(40, 400)


def timed(label: str, repeat: int, run: Callable[[], Any]) -> tuple[str, float, float]:
    """p50 and p95 of ``repeat`` runs of ``run``, in ms (after one warm-up run)."""
    run()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return label, statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def per_pixel(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom's transforms applied to every pixel, then scaled to 8 bits."""
    spec = Dataset()
    spec.PhotometricInterpretation = "MONOCHROME2"
    spec.BitsStored = 8
    spec.PixelRepresentation = 0
    spec.WindowCenter, spec.WindowWidth = WINDOW.center, WINDOW.width
    windowed = apply_windowing(apply_modality_lut(frame, ds), spec)
    out: np.ndarray = np.rint(np.clip(windowed, 0, 255)).astype(np.uint8)
    return out


def stages(files: list[Path], repeat: int) -> list[tuple[str, float, float]]:
    """The pipeline's stages, one at a time, on the first slice."""
    ds = dcmread(files[0])
    frame = pixel_array(ds, index=0)
    voi = lut.check_window(WINDOW.center, WINDOW.width, WINDOW.function)
    attrs = lut.frame_attributes(ds, 0)
    table = lut.grey_to_8bit(frame, attrs, voi)
    assert np.array_equal(table, per_pixel(frame, ds)), "the two LUT methods disagree"
    image = Image.fromarray(table)
    return [
        timed("parse: dcmread (whole file)", repeat, lambda: dcmread(files[0])),
        timed("decode frame: pixel_array(ds, index=0)", repeat, lambda: pixel_array(ds, index=0)),
        timed(
            "LUTs, pydicom per pixel (modality + windowing)",
            repeat,
            lambda: per_pixel(frame, ds),
        ),
        timed(
            "LUTs, pydicom per value -> table (viewer/lut.py)",
            repeat,
            lambda: lut.grey_to_8bit(frame, lut.frame_attributes(ds, 0), voi),
        ),
        timed("JPEG encode q85 (Pillow)", repeat, lambda: encode.encode(image, "image/jpeg", 85)),
    ]


def whole_calls(files: list[Path], repeat: int) -> list[tuple[str, float, float]]:
    """:func:`render` end to end, cycling over the slices."""
    rows = []
    cases = [
        ("render() image/jpeg, whole call", RenderParams(window=WINDOW)),
        ("render() image/png", RenderParams(window=WINDOW, media_type="image/png")),
        ("render() image/webp", RenderParams(window=WINDOW, media_type="image/webp")),
        ("render() image/gif", RenderParams(window=WINDOW, media_type="image/gif")),
        ("render() image/jpeg, 64 px thumbnail", RenderParams(viewport=(64, 64))),
        (
            "render() image/jpeg, with annotation",
            RenderParams(annotation=frozenset({"patient", "technique"})),
        ),
    ]
    for label, params in cases:
        rows.append(timed(label, repeat, _cycling(files, params)))
    sizes = [len(render(f, RenderParams(window=WINDOW)).body) for f in files]
    print(f"JPEG q85 bytes per slice: median {statistics.median(sizes):.0f}")
    return rows


def _cycling(files: list[Path], params: RenderParams) -> Callable[[], Any]:
    """A call that renders the next file of ``files`` each time."""
    paths = cycle(files)
    return lambda: render(next(paths), params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    args = parser.parse_args()
    series = ensure_series(args.cache, "render-pipeline", args.slices, patient=0)
    files = sorted(series.folder.glob("*.dcm"))
    rows = stages(files, args.repeat) + whole_calls(files, args.repeat)
    print(f"\n| {'stage':50s} | p50 ms | p95 ms |\n|{'-' * 52}|-------:|-------:|")
    for label, p50, p95 in rows:
        print(f"| {label:50s} | {p50:6.2f} | {p95:6.2f} |")


if __name__ == "__main__":
    main()
