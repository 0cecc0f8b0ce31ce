"""Parameter types shared by routes: ids bounded to what the database can hold.

FastAPI takes any Python ``int`` for an ``int`` parameter; a 25-digit id then reaches
the database driver, which cannot send it (SQLite: OverflowError), and the request
ended as a 500. Bounded here, it is a 422 like any other malformed id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

ROW_ID_MAX = 2**63 - 1  # SQLite INTEGER, PostgreSQL bigint
RowId = Annotated[int, Path(ge=1, le=ROW_ID_MAX)]
Offset = Annotated[int, Query(ge=0, le=ROW_ID_MAX)]
