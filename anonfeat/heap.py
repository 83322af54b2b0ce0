"""Giving freed heap memory back to the operating system during long runs (glibc only).

glibc's malloc keeps freed memory in the process's heap and returns it to the system only from
the top of the heap. In a long extraction the main process allocates and frees the same kinds of
buffers (batches, activations, unpickled chunks) thousands of times, and in some runs its heap
kept growing although nothing in it was live: on the 10-minute 720p video inside `anonfeat bench`
the heap grew from 185 to 728 MB in 80 seconds and stayed there, and one `malloc_trim(0)` brought
the process's anonymous memory from 979 to 489 MB. Whether it happens depends on timing (seen in
both instrumented benchmark runs on a loaded machine, not in 90 s of the same extraction on its own).
`HeapTrimmer` calls `malloc_trim(0)` at most once per interval (1 s), so what is retained stays
bounded by about one interval of work; a call took 3 ms on average (23 ms on a heavily loaded
machine), 0.2-1.1 % of the run.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Callable

TRIM_INTERVAL_S = 1.0
TRIM_ENV = "ANONFEAT_HEAP_TRIM"  # seconds between trims, or "off"


def trim_interval() -> float | None:
    """Seconds between trims: ANONFEAT_HEAP_TRIM when set ("off" or "0": never), else TRIM_INTERVAL_S."""
    value = os.environ.get(TRIM_ENV, "").strip().lower()
    if not value:
        return TRIM_INTERVAL_S
    if value in ("off", "0", "no", "false"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return TRIM_INTERVAL_S
    return seconds if seconds > 0 else None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (other C libraries and systems keep their own policy)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # already loaded: no library search, no subprocess
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """`maybe()` after each unit of work: trims the heap when `interval` seconds have passed
    (`interval` None: never; left at its default: `trim_interval()`, i.e. ANONFEAT_HEAP_TRIM or 1 s)."""

    def __init__(self, interval: float | None = -1.0):
        self.interval = trim_interval() if interval is not None and interval < 0 else interval
        self._trim = _malloc_trim() if self.interval is not None else None
        self._last = time.monotonic()
        self.calls = 0
        self.seconds = 0.0  # time spent trimming (its cost, reported by the benchmark)

    @property
    def available(self) -> bool:
        return self._trim is not None

    def maybe(self) -> None:
        if self._trim is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.trim(now)

    def trim(self, now: float | None = None) -> None:
        if self._trim is None:
            return
        started = time.monotonic() if now is None else now
        self._trim(0)
        self._last = time.monotonic()
        self.calls += 1
        self.seconds += self._last - started
