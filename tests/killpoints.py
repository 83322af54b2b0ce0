"""Test-only crash points: SIGKILL a run at a named place, to prove what survives a crash.

`arm("POINT:N")` installs a callback at hook point POINT (anonfeat.hooks): the N-th time (counted
per process, from 1) the code reaches it, the whole run is killed with SIGKILL: its process group
(the main process, the writer thread and the decoding workers together), as a crash or the OOM
killer would, with no cleanup, no `finally`, no HDF5 close. tests/conftest.py's `forked_cli` arms it
in the child that runs the CLI, in its own session, so only that run dies; decoding workers forked
from it inherit the armed hook. The product code only fires the points (docs/guarantees.md).
"""

from __future__ import annotations

import os
import signal

from anonfeat import hooks

POINTS = hooks.POINTS


def parse(spec: str) -> tuple[str, int]:
    """"POINT:N" -> (POINT, N); a bad spec is a ValueError naming the expected form."""
    name, _, count = spec.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"kill point {spec!r}: expected POINT:N with POINT one of {', '.join(POINTS)} and N >= 1")
    return name, int(count)


def _kill_run() -> None:
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)  # main process and decoding workers at once
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def arm(spec: str):
    """SIGKILL this process's run the N-th time point POINT fires ("POINT:N"); returns the remover."""
    name, count = parse(spec)
    hits = 0

    def maybe_kill(point: str, *details: object) -> None:
        nonlocal hits
        hits += 1
        if hits == count:
            _kill_run()

    return hooks.install(name, maybe_kill)
