"""Thin wrappers over scikit-learn metrics with the audit's conventions.

Attribute matrices are (n_videos, k) 0/1; scores are per-video logits (AP only needs their order). An
attribute with a single class among the evaluated videos has no defined AP: it is reported as such and
left out of the macro means.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score


def evaluable(y_true: np.ndarray) -> np.ndarray:
    """Mask of the attributes that have both classes among these videos."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return np.zeros(y_true.shape[1] if y_true.ndim == 2 else 0, dtype=bool)
    return (y_true.min(axis=0) == 0) & (y_true.max(axis=0) == 1)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid; a very negative logit overflows exp to inf, which gives the exact limit 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def cmap(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro average precision over the evaluable attributes (NaN when there is none)."""
    mask = evaluable(y_true)
    if not mask.any():
        return float("nan")
    return float(average_precision_score(y_true[:, mask], scores[:, mask], average="macro"))


def macro_f1(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro F1 of the 0.5-probability decisions over the evaluable attributes."""
    mask = evaluable(y_true)
    if not mask.any():
        return float("nan")
    predicted = (probabilities(scores[:, mask]) >= 0.5).astype(int)
    return float(f1_score(y_true[:, mask], predicted, average="macro", zero_division=0))


def per_attribute(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AP, F1) per attribute; NaN for attributes with a single class."""
    k = y_true.shape[1]
    ap, f1 = np.full(k, np.nan), np.full(k, np.nan)
    predicted = (probabilities(scores) >= 0.5).astype(int)
    for j in np.flatnonzero(evaluable(y_true)):
        ap[j] = average_precision_score(y_true[:, j], scores[:, j])
        f1[j] = f1_score(y_true[:, j], predicted[:, j], zero_division=0)
    return ap, f1


def chance_cmap(y_true: np.ndarray) -> float:
    """cMAP of an attacker that guesses: the AP of a constant score is each attribute's positive rate."""
    mask = evaluable(y_true)
    if not mask.any():
        return float("nan")
    constant = np.zeros(y_true[:, mask].shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(average_precision_score(y_true[:, mask], constant, average="macro"))


def top1(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Top-1 accuracy of the argmax class."""
    if len(y_true) == 0:
        return float("nan")
    return float(accuracy_score(y_true, np.asarray(logits).argmax(axis=1)))
