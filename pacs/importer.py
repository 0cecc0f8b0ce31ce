"""``pacs import``: bring a folder tree of DICOM files in through the one ingest door."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from storage import Archive, Outcome, Source

log = logging.getLogger(__name__)


def find_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under ``paths``, recursively, in a stable order."""
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(folder, name)
        else:
            log.error("%s: no such file or folder", path)


def import_paths(
    archive: Archive,
    paths: Iterable[Path],
    *,
    site: str = "",
    workers: int = 4,
    show_progress: bool = True,
) -> Counter[Outcome]:
    """Ingest every file under ``paths``; rejected ones are logged with the reason."""
    files = list(find_files(paths))
    source = Source(ae_title="IMPORT", site=site)
    totals: Counter[Outcome] = Counter()
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(files), unit="file", disable=not show_progress) as bar,
    ):
        results = pool.map(lambda p: archive.ingest(p, source), files)
        for path, result in zip(files, results, strict=True):
            totals[result.outcome] += 1
            if not result.ok:
                log.error("rejected %s: %s", path, result.reason)
            bar.update(1)
    return totals
