"""Test-only crash points: SIGKILL a run at a named place, to prove what survives a crash.

With ``ANONFEAT_TEST_KILL_AT="POINT:N"`` in the environment, the N-th time (counted per process,
from 1) the code reaches ``kill_point("POINT")`` the whole run is killed with SIGKILL: its process
group (the main process, the writer thread and the decoding workers together), as a crash or the
OOM killer would, with no cleanup, no `finally`, no HDF5 close. tests/test_reliability.py starts each
run in its own session, so only that run dies. Without the variable, `kill_point` is one global
lookup and a return: nothing else happens. Not for production use.

Points (see docs/guarantees.md):

- ``decode``: before a chunk of frames is decoded (in the decoding worker, or the main process
  with ``--workers 0``);
- ``write``: a video's write starts, nothing of it is in the file yet;
- ``write-datasets``: its clip features are written, the other datasets and attributes not yet;
- ``write-mark``: all its datasets and attributes are written, the ``complete`` mark not yet;
- ``written``: the video is marked complete and the file flushed (between two videos).
"""

from __future__ import annotations

import os
import signal

ENV = "ANONFEAT_TEST_KILL_AT"
POINTS = ("decode", "write", "write-datasets", "write-mark", "written")


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected POINT:N with POINT one of {', '.join(POINTS)} and N >= 1")
    return name, int(count)


_TARGET = _parse(os.environ.get(ENV))
_hits = 0


def kill_point(name: str) -> None:
    """SIGKILL this run here when ANONFEAT_TEST_KILL_AT names this point and count; else nothing."""
    global _hits
    if _TARGET is None or _TARGET[0] != name:
        return
    _hits += 1
    if _hits == _TARGET[1]:
        try:
            os.killpg(os.getpgid(0), signal.SIGKILL)  # main process and decoding workers at once
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
