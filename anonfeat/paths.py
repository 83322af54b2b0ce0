"""Where commands write: never over one of their inputs, never one output for two sources.

Every command calls `check_outputs` first, before it loads a model or reads a video, so a wrong
path costs nothing and destroys nothing. The rules (docs: "Guarantees"):

* an output file or folder is never an input (the same path, or the same file through a symlink, a
  hard link or `..`);
* a folder of output videos or images (`prune --save-videos/--save-heatmaps`) never lies inside an
  input folder of videos (the next run would take the outputs for inputs, and could write over them);
* two sources never map to one output (`check_distinct_targets`): `a.mp4` and `a.avi` in one
  folder would both be saved as `a.mp4`, so the run is refused naming both, before any work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

from anonfeat.errors import AnonfeatError

PathLike = str | os.PathLike


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` name one file or folder: equal resolved paths, or one inode when both exist."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def is_inside(path: PathLike, folder: PathLike) -> bool:
    """True when `path` is `folder` or lies below it (symlinks resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None],
                  folders: Iterable[str] = ()) -> None:
    """Refuse, in one line, an output that is one of the inputs, or an output folder (named in `folders`)
    inside an input folder. `outputs` and `inputs` map a flag or argument name to its path (None: unset)."""
    folders = set(folders)
    for flag, out in outputs.items():
        if out is None:
            continue
        if flag in folders:
            check_writable_folder(out, flag)
        for name, source in inputs.items():
            if source is None:
                continue
            if same_file(out, source):
                raise AnonfeatError(f"{out}: {flag} is also the input {name} ({source}); nothing was written: "
                                    f"choose another {flag}")
            if flag in folders and Path(source).is_dir() and is_inside(out, source):
                raise AnonfeatError(f"{out}: {flag} lies inside the input folder {name} ({source}), where its "
                                    f"outputs would be taken for inputs; choose a {flag} folder outside it")


def check_distinct_targets(items: Iterable, target: Callable[[str], Path], flag: str) -> None:
    """Refuse when two videos (items with .key and .path) would be written to one output path, or an
    output path is one of the input videos; names them all and the fix."""
    items = list(items)
    by_target: dict[Path, list[str]] = {}
    for item in items:
        by_target.setdefault(target(item.key), []).append(item.key)
    for path, keys in by_target.items():
        if len(keys) > 1:
            raise AnonfeatError(f"{flag}: {', '.join(keys)} would all be saved as {path}; rename all but one of "
                                "them (or process them in separate runs)")
    sources = {}
    for item in items:
        try:
            stat = os.stat(item.path)
            sources[(stat.st_dev, stat.st_ino)] = item.key
        except OSError:
            continue
    for path, keys in by_target.items():
        try:
            stat = os.stat(path)
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) in sources:
            source = sources[(stat.st_dev, stat.st_ino)]
            raise AnonfeatError(f"{path}: {flag} would write over the input video {source}; "
                                f"choose a {flag} folder outside the input")


def check_writable_file(path: PathLike, flag: str) -> None:
    """Refuse now, not after an hour of work, an output file that cannot be written: a folder, or a place
    without write permission (the nearest existing folder above it decides, as it is created later)."""
    path = Path(path)
    if path.is_dir():
        raise AnonfeatError(f"{path}: {flag} is a folder; give a file path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise AnonfeatError(f"{path}: {flag} cannot be written (permission denied); choose another path")
        return
    _check_creatable(path, flag)


def check_writable_folder(path: PathLike, flag: str) -> None:
    """The same for an output folder: not an existing file, and writable or creatable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AnonfeatError(f"{path}: {flag} is a file, not a folder; give a folder path")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise AnonfeatError(f"{path}: {flag} cannot be written (permission denied); choose another folder")
        return
    _check_creatable(path, flag)


def _check_creatable(path: Path, flag: str) -> None:
    """The nearest existing folder above `path` must be a folder we may write in (it is created later)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise AnonfeatError(f"{path}: {flag} cannot be written ({folder} is not a writable folder); "
                            "choose another path")
