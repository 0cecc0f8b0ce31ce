"""Per-client rate limits kept in memory: a token bucket per key (e.g. client address).

Each process keeps its own buckets, so N ``--only http`` processes behind a load
balancer allow up to N times the rate; the account lock-out (in the database) is
what bounds guessing across processes.
"""

from __future__ import annotations

import math
import threading
import time

_MAX_KEYS = 100_000  # a flood of spoofed keys empties the table instead of growing it


class RateLimiter:
    """At most ``per_minute`` events per key in any minute, in bursts up to that many."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0  # tokens back per second
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> int:
        """Count one event for ``key``: 0 if allowed, else seconds until one is."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= _MAX_KEYS:
                self._buckets.clear()
            tokens, then = self._buckets.get(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - then) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return max(1, math.ceil((1.0 - tokens) / self._rate))
            self._buckets[key] = (tokens - 1.0, now)
            return 0
