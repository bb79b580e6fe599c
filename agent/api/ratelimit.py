"""Per-client token buckets for the public port (relay-api.md §9).

One bucket per (route class, client certificate fingerprint). The bucket map is bounded: idle
buckets that have refilled completely carry no state worth keeping and are dropped.
"""

from __future__ import annotations

import math
import threading

_MAX_KEYS = 10_000


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``rate == 0`` disables the limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> int:
        """Take one token; return 0 when allowed, else the Retry-After seconds (integer ≥ 1)."""
        if self.rate <= 0:
            return 0
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > _MAX_KEYS:
                    self._prune(now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
