"""Memory the main process of a long run frees must go back to the system (glibc keeps it otherwise)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anonfeat.extract import ExtractOptions, extract
from anonfeat.heap import HeapTrimmer
from anonfeat.video.discover import VideoItem

needs_glibc = pytest.mark.skipif(not HeapTrimmer().available, reason="malloc_trim is glibc's")

# 150 MB of 100 kB blocks (below glibc's mmap threshold: they live in the heap), all freed but the
# last one, which pins the top of the heap so that free() alone cannot give anything back.
_FRAGMENTED_HEAP = r"""
import sys
from anonfeat.heap import HeapTrimmer

def anon_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:"))

before = anon_kb()
blocks = [bytearray(100_000) for _ in range(1500)]
pin = bytearray(100_000)
del blocks
kept = anon_kb() - before
trimmer = HeapTrimmer(interval=float(sys.argv[1]))
trimmer.maybe()
print(kept, anon_kb() - before, trimmer.calls)
"""


def _fragmented(interval: float) -> tuple[int, int, int]:
    run = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP, str(interval)], capture_output=True, text=True,
                         check=True)
    kept, after, calls = (int(v) for v in run.stdout.split())
    return kept, after, calls


@needs_glibc
def test_trimming_gives_freed_heap_memory_back():
    kept, after, calls = _fragmented(0.0)
    assert kept > 100_000  # kB: glibc kept the freed blocks
    assert calls == 1 and after < kept - 100_000


@needs_glibc
def test_trimmer_waits_for_its_interval():
    kept, after, calls = _fragmented(3600.0)
    assert calls == 0 and after > 100_000


@needs_glibc
def test_extract_trims_the_heap_during_the_run(video_dir, tmp_path, monkeypatch):
    import anonfeat.extract as ex

    monkeypatch.setattr(ex, "HeapTrimmer", lambda: HeapTrimmer(interval=0.0))
    result = extract([VideoItem("a.mp4", video_dir / "a.mp4")], tmp_path / "o.h5",
                     ExtractOptions(encoder="videomae-tiny", random_init=True, frame_stride=2, clip_stride=6,
                                    batch_size=4, workers=0, device="cpu", progress=False))
    assert not result.failed and result.clips > 0
    assert result.heap_trims >= 1 and result.heap_trim_seconds >= 0


def test_trim_interval_from_the_environment(monkeypatch):
    from anonfeat.heap import TRIM_ENV, TRIM_INTERVAL_S, trim_interval

    monkeypatch.delenv(TRIM_ENV, raising=False)
    assert trim_interval() == TRIM_INTERVAL_S
    monkeypatch.setenv(TRIM_ENV, "off")
    assert trim_interval() is None and not HeapTrimmer().available
    HeapTrimmer().maybe()  # a no-op, not an error
    monkeypatch.setenv(TRIM_ENV, "2.5")
    assert trim_interval() == 2.5 and HeapTrimmer().interval == 2.5
