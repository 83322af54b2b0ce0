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


def key_problem(key: str) -> str | None:
    """Why `key` cannot name a video group in a store (None when it can): a key is a non-empty
    '/'-separated relative path without empty, '.' or '..' parts and without NUL bytes. Such a key
    names exactly one group below /videos, never /videos itself or a group outside it."""
    if not key:
        return "an empty key"
    if "\x00" in key:
        return "a NUL byte"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "an empty, '.' or '..' path part"
    return None


def check_keys(items: list[VideoItem], source: str | os.PathLike) -> None:
    """Refuse keys a store cannot hold side by side: an invalid key, or one key that is a folder of
    another ('a' and 'a/b.mp4': writing or failing 'a' would replace the group that holds 'a/b.mp4')."""
    keys = set()
    for item in items:
        problem = key_problem(item.key)
        if problem:
            raise AnonfeatError(f"{source}: video {item.path} gives the store key {item.key!r} with {problem}; "
                                "list video files by their path relative to the list file")
        keys.add(item.key)
    for key in sorted(keys):
        parts = key.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in keys:
                raise AnonfeatError(f"{source}: video key {parent!r} is also a folder of video {key!r}; one "
                                    "store group cannot be both: rename one of them or list them in separate runs")


def find_videos(source: str | os.PathLike, warnings: list[str] | None = None) -> list[VideoItem]:
    """Videos below a folder (by extension, sorted, symlinked folders not followed so a link
    loop cannot hang the run), or listed one per line in a text file (relative to that file;
    blank lines and # comments skipped). Folders that cannot be read are reported in `warnings`
    (one line each; when `warnings` is None they are refused with an AnonfeatError)."""
    source = Path(source)
    if source.is_dir():
        items, unreadable = [], []

        def on_error(exc: OSError) -> None:
            unreadable.append(f"{exc.filename}: folder skipped, it cannot be read ({exc.strerror}); fix its "
                              "permissions and re-run to add its videos")

        for root, dirs, files in os.walk(source, followlinks=False, onerror=on_error):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if path.suffix.lower() in VIDEO_EXTENSIONS:
                    items.append(VideoItem(path.relative_to(source).as_posix(), path))
        if unreadable:
            if warnings is None:
                raise AnonfeatError(unreadable[0])
            warnings.extend(unreadable)
        check_keys(items, source)
        return items
    if source.is_file():
        items = _from_list(source)
        check_keys(items, source)
        return items
    raise AnonfeatError(f"{source}: no such folder or list file; pass a folder of videos or a "
                        "text file with one video path per line")


def _from_list(list_file: Path) -> list[VideoItem]:
    """Each line's key is its lexical path relative to the list's folder (a symlink keeps the name
    it is listed under; paths outside that folder keep their absolute path without the leading '/')."""
    base = os.path.normpath(os.path.abspath(list_file.parent))
    items, seen = [], set()
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise AnonfeatError(f"{list_file}: not a text file; pass a folder of videos or a UTF-8 "
                            "text file with one video path per line") from None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            raise AnonfeatError(f"{list_file}: line {number} holds a NUL byte; write one plain video path per line")
        lexical = os.path.normpath(os.path.join(base, line))  # absolute lines replace `base`
        path = Path(line) if os.path.isabs(line) else list_file.parent / line
        if path.is_dir():
            raise AnonfeatError(f"{list_file}: line {number} ({line!r}) is a folder; list its video files one "
                                "per line, or pass the folder itself instead of the list")
        relative = os.path.relpath(lexical, base)
        key = lexical.lstrip("/") if relative == ".." or relative.startswith("../") else relative
        key = key.replace(os.sep, "/")
        if key_problem(key):
            raise AnonfeatError(f"{list_file}: line {number} ({line!r}) does not name a video file; list one "
                                "video path per line")
        if key not in seen:
            seen.add(key)
            items.append(VideoItem(key, path))
    return items
