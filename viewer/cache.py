"""The rendered-image cache: image bytes kept in memory, least recently used out first.

Keys name everything the bytes depend on (the file's SHA-256, the frame, the
rendering parameters, the media type, the pipeline version), and stored
instances never change under a hash, so an entry never goes stale: it lives
until the byte cap pushes it out. One entry may take at most an eighth of the
cap, so a single large cine GIF cannot flush a whole study's worth of slices.
Safe to use from many threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

_LARGEST_SHARE = 8  # an entry may use at most 1/8 of the cap


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int


class RenderCache:
    """An LRU map from keys to bytes, bounded by the total size of the values."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: Hashable, value: bytes) -> bool:
        """Keep ``value``; returns whether it was kept (too large an entry is not)."""
        size = len(value)
        if size > self.max_bytes // _LARGEST_SHARE:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
        return True

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                len(self._entries), self._bytes, self.max_bytes, self._hits, self._misses
            )
