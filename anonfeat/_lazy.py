"""Names a package exports but imports on first use, so that importing it (and `anonfeat --help`)
does not load torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` (PEP 562) serving each name of `where` from the module it names."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
