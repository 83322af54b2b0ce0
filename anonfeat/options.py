"""The Python API's option dataclasses (ExtractOptions, PruneOptions, AdapterTrainOptions, ...) are
taken whole or as keyword overrides: `extract(src, out, options, batch_size=64)`."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def with_overrides(options: T | None, cls: type[T], overrides: dict[str, Any]) -> T:
    """A copy of `options` (or of `cls()`) with `overrides` applied; the caller's object is never
    changed, and a misspelt option name is an error instead of being silently ignored."""
    base = cls() if options is None else options
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {type(base).__name__} option(s): {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return dataclasses.replace(base, **overrides)
