"""Imported by bench scripts before the project's packages.

``bench/viewer.py`` (the web viewer benchmark) would otherwise shadow the
``viewer`` package for every script run from this folder, since Python puts a
script's own folder first on ``sys.path`` and the editable install's finder comes
after it. The package is imported once with this folder off the path (so it is
the one in ``sys.modules``), then the folder goes back, last, for the local
helpers (``servers``, ``ct_series``...).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
importlib.import_module("viewer")
sys.path.append(str(HERE))
