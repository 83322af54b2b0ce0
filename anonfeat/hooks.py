"""Named points in the product code where a caller may run code of its own: no-ops unless installed.

The product fires them (`hooks.fire("write", key)`); nothing is installed by the product itself.
The tests install a callback that SIGKILLs the run at one of them (tests/killpoints.py) to prove
what survives a crash (docs/guarantees.md). Callbacks are per process: a forked decoding worker
inherits those installed before the fork. With none installed, `fire` is one dict lookup.

Points:

- ``decode``: before a chunk of frames is decoded (in the decoding worker, or the main process
  with ``--workers 0``);
- ``write``: a video's write starts, nothing of it is in the file yet;
- ``write-datasets``: its clip features are written, the other datasets and attributes not yet;
- ``write-mark``: all its datasets and attributes are written, the ``complete`` mark not yet;
- ``written``: the video is marked complete and the file flushed (between two videos).
"""

from __future__ import annotations

from typing import Callable

POINTS = ("decode", "write", "write-datasets", "write-mark", "written")

# callback(point, *details): the details are what `fire` was given (the video key, for the store)
Hook = Callable[..., None]

_installed: dict[str, list[Hook]] = {}


def install(point: str, callback: Hook) -> Callable[[], None]:
    """Run `callback` each time `point` fires; returns a function that removes it again."""
    if point not in POINTS:
        raise ValueError(f"unknown hook point {point!r}; choose one of {', '.join(POINTS)}")
    _installed.setdefault(point, []).append(callback)

    def remove() -> None:
        callbacks = _installed.get(point, [])
        if callback in callbacks:
            callbacks.remove(callback)

    return remove


def fire(point: str, *details: object) -> None:
    """Run the callbacks installed at `point` (none: nothing happens)."""
    for callback in _installed.get(point, ()):
        callback(point, *details)


def clear() -> None:
    """Remove every installed callback."""
    _installed.clear()
