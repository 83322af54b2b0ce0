"""The Anonymizing Adapter Module (AAM): training, the adapter file, and sanitizing features."""

from __future__ import annotations

from anonfeat._lazy import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _LAZY)
