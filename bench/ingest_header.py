"""What reading an instance's header for the index costs: pydicom against storage.quick_header.

Run from the repository root: ``.venv/bin/python bench/ingest_header.py [--repeat 5]``.

Each reader runs :func:`storage.header.read_header` (parse, truncation walk, UID
checks and the index values) over the generated 200-slice 512x512 CT series
(page cache warm) and over ``sample_dicom/``; the table gives the median
milliseconds per file over ``--repeat`` passes and the ratio. This is the
measurement behind hand-writing the little-endian header reader.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from ct_series import ensure_series

from storage.header import read_header

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


def per_file_ms(files: list[Path], *, quick: bool, repeat: int) -> float:
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        for path in files:
            read_header(path, quick=quick)
        passes.append((time.perf_counter() - started) / len(files) * 1000)
    return statistics.median(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    args = parser.parse_args()
    series = ensure_series(args.cache, "s0", 200, 0)
    sets = {
        "512x512 CT (200 files)": sorted(series.folder.glob("*.dcm")),
        "sample_dicom/": sorted((ROOT / "sample_dicom").rglob("*.dcm")),
    }
    print("| files | pydicom ms/file | quick ms/file | pydicom / quick |")
    print("|---|---:|---:|---:|")
    for name, files in sets.items():
        slow = per_file_ms(files, quick=False, repeat=args.repeat)
        fast = per_file_ms(files, quick=True, repeat=args.repeat)
        print(f"| {name} | {slow:.3f} | {fast:.3f} | {slow / fast:.1f}x |")


if __name__ == "__main__":
    main()
