"""The Anonymizing Adapter Module (AAM): training, the adapter file, and sanitizing features."""

from __future__ import annotations

import importlib

_LAZY = {
    "AdapterTrainOptions": "anonfeat.adapter.options",
    "AnonymizingAdapter": "anonfeat.adapter.model",
    "sanitize_features": "anonfeat.adapter.model",
    "LoadedAdapter": "anonfeat.adapter.io",
    "load_adapter": "anonfeat.adapter.io",
    "save_adapter": "anonfeat.adapter.io",
    "sanitize_store": "anonfeat.adapter.sanitize",
    "train_adapter": "anonfeat.adapter.train",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anonfeat.adapter' has no attribute {name!r}")
