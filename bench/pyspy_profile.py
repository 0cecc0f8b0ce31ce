"""Profiling the server during a push with py-spy, summarised as top functions.

py-spy samples the server's Python stacks from outside (``--format raw`` gives
collapsed stacks, one ``frame;frame;... count`` per line); the summary ranks
functions (all lines of a function together) by self time (the frame on top)
and by inclusive time (anywhere on the stack).

Two modes: ``gil=True`` keeps only samples of the thread holding the GIL, which
is where the server's Python CPU goes; otherwise every non-idle thread is
sampled, which also shows time spent in fsync, file I/O and pynetdicom's 1 ms
polling sleeps (py-spy counts ``time.sleep`` as active).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def recording(pid: int, output: Path, *, gil: bool, rate: int = 200) -> Iterator[None]:
    """Run ``py-spy record`` on ``pid`` for the duration of the block."""
    executable = Path(sys.executable).with_name("py-spy")
    command = [
        str(executable if executable.exists() else shutil.which("py-spy") or "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(output),
        *(["--gil"] if gil else []),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        _, errors = proc.communicate(timeout=60)
        if proc.returncode not in (0, -signal.SIGINT) and not output.exists():
            print(f"py-spy failed: {errors.decode(errors='replace')}", file=sys.stderr)


def summarize(collapsed: Path, top: int = 20) -> str:
    """Top functions by self and inclusive samples from a collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples"
    return "\n".join(
        [
            f"{total} samples",
            "self time:",
            *_ranked(own, total, top),
            "inclusive time:",
            *_ranked(inclusive, total, top),
        ]
    )


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name


def _ranked(counter: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {count / total:6.1%}  {frame}" for frame, count in counter.most_common(top)]
