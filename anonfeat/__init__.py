"""anonfeat: video features from frozen encoders, without leaking who is in the videos.

The Python API mirrors the CLI: `load_encoder`, `extract`, `FeatureStore`, ...
Heavy modules (torch, PyAV) are imported on first use so `anonfeat --version` stays instant.
"""

from __future__ import annotations

from anonfeat._lazy import lazy_getattr

from anonfeat._version import __version__

_LAZY = {
    "load_encoder": "anonfeat.encoders",
    "list_encoders": "anonfeat.encoders",
    "EncoderConfig": "anonfeat.encoders.config",
    "FeatureStore": "anonfeat.store",
    "extract": "anonfeat.extract",
    "ExtractOptions": "anonfeat.options",
    "make_benchmark": "anonfeat.synth",
    "AnonfeatError": "anonfeat.errors",
    "load_adapter": "anonfeat.adapter.io",
    "sanitize_features": "anonfeat.adapter.model",
    "train_adapter": "anonfeat.adapter.train",
    "sanitize_store": "anonfeat.adapter.sanitize",
    "train_pruner": "anonfeat.pruning.train",
    "prune": "anonfeat.pruning.run",
    "PruneOptions": "anonfeat.pruning.options",
    "load_pruner": "anonfeat.pruning.io",
    "load_labels": "anonfeat.labels",
    "stratified_split": "anonfeat.labels",
    "audit_stores": "anonfeat.audit.runner",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
