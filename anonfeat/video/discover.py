"""Finding the videos of a run: a folder (recursively) or a text file listing paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from anonfeat.errors import AnonfeatError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg",
                              ".flv", ".wmv", ".ogv", ".3gp", ".ts"})


@dataclass(frozen=True)
class VideoItem:
    """A video to process: its store key (path relative to the input, '/'-separated) and file."""

    key: str
    path: Path


def find_videos(source: str | os.PathLike) -> list[VideoItem]:
    """Videos below a folder (by extension, sorted, symlinked folders not followed so a link
    loop cannot hang the run), or listed one per line in a text file (relative to that file;
    blank lines and # comments skipped)."""
    source = Path(source)
    if source.is_dir():
        items = []
        for root, dirs, files in os.walk(source, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if path.suffix.lower() in VIDEO_EXTENSIONS:
                    items.append(VideoItem(path.relative_to(source).as_posix(), path))
        return items
    if source.is_file():
        return _from_list(source)
    raise AnonfeatError(f"{source}: no such folder or list file; pass a folder of videos or a "
                        "text file with one video path per line")


def _from_list(list_file: Path) -> list[VideoItem]:
    base = list_file.parent
    items, seen = [], set()
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise AnonfeatError(f"{list_file}: not a text file; pass a folder of videos or a UTF-8 "
                            "text file with one video path per line") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else base / line
        try:
            key = path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            key = path.resolve().as_posix().lstrip("/")
        if key not in seen:
            seen.add(key)
            items.append(VideoItem(key, path))
    return items
