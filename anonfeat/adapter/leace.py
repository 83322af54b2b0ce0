"""LEACE as an adapter kind: a closed-form linear eraser of the private attributes.

LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form") finds the
smallest (least-squares) affine edit x -> x - P (x - mean) after which no linear classifier beats a
constant one at predicting the concept on the fitting data: the edited features have zero
cross-covariance with the attributes. It is fit in seconds from the train covariance and
cross-covariance, and is the baseline any trained anonymizer has to beat at equal utility.

The fit uses the `concept-erasure` package; the file stores only the edit's factors
(P = proj_left @ proj_right, of rank at most the number of attributes) and the mean, so applying
an eraser needs nothing but torch.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from anonfeat.adapter.data import VideoFeatures
from anonfeat.errors import AnonfeatError

KIND = "leace"


class LinearEraser(nn.Module):
    """x -> x - ((x - bias) @ proj_right.T) @ proj_left.T on every row (each clip alone).

    Takes (..., D) features like the adapter; `valid` is accepted and ignored (no row depends on another).
    """

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.dim, self.rank = dim, rank
        self.register_buffer("proj_left", torch.zeros(dim, rank))
        self.register_buffer("proj_right", torch.zeros(rank, dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return x - ((x - self.bias) @ self.proj_right.T) @ self.proj_left.T

    def architecture(self) -> dict:
        return {"kind": KIND, "dim": self.dim, "rank": self.rank}


def erasure_rows(data: VideoFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, attributes): every clip and every static clip of every video, each row carrying its
    video's attribute vector (the audit attacks both views)."""
    rows, targets = [], []
    for i, (clips, statics) in enumerate(zip(data.clips, data.statics)):
        for view in (clips, statics):
            rows.append(view)
            targets.append(data.attributes[i].expand(len(view), -1))
    return torch.cat(rows).double(), torch.cat(targets).double()


def fit_leace(data: VideoFeatures) -> LinearEraser:
    """Fit the LEACE eraser of `data.attributes` on both views of `data` (the train rows)."""
    with warnings.catch_warnings():  # the package's import-time torch.jit.script deprecation is not the user's
        warnings.simplefilter("ignore", FutureWarning)
        from concept_erasure import LeaceEraser

    if data.attributes.shape[1] == 0:
        raise AnonfeatError("--method leace erases private attributes: the labels need attribute columns "
                            "(name them with --attributes)")
    x, z = erasure_rows(data)
    constant = [name for j, name in enumerate(data.attribute_names) if z[:, j].min() == z[:, j].max()]
    if constant:
        raise AnonfeatError(f"attribute(s) {', '.join(constant)} take one value on every train video: nothing to "
                            "erase; leave them out with --attributes")
    eraser = LeaceEraser.fit(x, z)
    left, right = eraser.proj_left, eraser.proj_right
    used = (left.abs().sum(0) > 0) & (right.abs().sum(1) > 0)  # directions the SVD tolerance kept
    if not bool(used.any()):
        raise AnonfeatError("the attributes show no linear correlation with the train features: the LEACE "
                            "eraser would be the identity; check --labels and --attributes")
    model = LinearEraser(x.shape[1], int(used.sum()))
    model.proj_left.copy_(left[:, used].float())
    model.proj_right.copy_(right[used].float())
    model.bias.copy_((eraser.bias if eraser.bias is not None else torch.zeros(x.shape[1])).float())
    return model.eval()
