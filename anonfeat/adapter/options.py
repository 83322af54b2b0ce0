"""Flags of `anonfeat train-adapter` and `anonfeat sanitize`, torch-free so the CLI can build its flags
from them without importing torch (see anonfeat.options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from anonfeat.errors import AnonfeatError
from anonfeat.options import (COMPRESSIONS, attributes_option, check_declared, device_option, option, progress_option,
                              split_seed_option)

METHODS = ("aam", "leace")
PRIVACY_LOSSES = ("ntxent", "attributes", "both")
ATTRIBUTE_LOSSES = ("decorrelate", "grl", "adversary")
PAIRS = ("static", "all")


@dataclass
class AdapterTrainOptions:
    """Flags of `anonfeat train-adapter`; defaults and their meaning: docs/cli.md#train-adapter."""

    method: str = option("aam", "aam (the trained adapter) or leace (closed-form LEACE eraser of the --attributes "
                                "columns on clip and static-clip rows; the loss flags do not apply).",
                          choices=METHODS)
    tasks: tuple[str, ...] = option(("action",), "Utility column to co-train (repeatable).", "--task",
                                    cli_type=List[str], parse=tuple)
    attributes: list[str] | None = attributes_option("Attribute columns for --privacy-loss attributes|both:")
    privacy_loss: str = option("ntxent", "ntxent (self-supervised), attributes (supervised, on the labels' "
                                         "attribute columns) or both.", choices=PRIVACY_LOSSES)
    depth: int = option(3, "Attention blocks (paper: 3).", min=1)
    heads: int = option(8, "Attention heads (paper: 8).", min=1)
    mlp_ratio: float = 2.0
    epochs: int = option(100, "Training epochs (after the warm-up).", min=1)
    warmup_epochs: int = option(10, "Epochs fitting heads on raw features first.", min=0)
    batch_size: int = option(64, "Videos per step.", "-b", min=2)
    lr: float = option(1e-3, "Learning rate (AdamW).")
    weight_decay: float = 0.05
    w_lc: float = option(1.0, "Latent consistency weight (paper: 100).")
    w_t: float = option(1.0, "Utility weight (paper: 1).")
    w_b: float = option(1.0, "NT-Xent privacy weight (paper: 1).")
    w_attr: float = option(1.0, "Supervised attribute privacy weight.")
    attr_loss: str = option("decorrelate", "Supervised term of --privacy-loss attributes|both: decorrelate (squared "
                                           "feature-attribute correlations, per view), grl (MLP head through "
                                           "gradient reversal) or adversary (experimental: a cross-fitted ensemble "
                                           "of MLP attackers plus decorrelation; keep --w-attr <= --w-lc).",
                            choices=ATTRIBUTE_LOSSES)
    # API only (no flags): the experimental adversary's ensemble (anonfeat.adapter.adversary)
    attackers: int = 4  # MLP attackers in the ensemble
    attacker_steps: int = 5  # attacker updates per adapter step
    linear_guard: bool = True  # also decorrelate features and attributes (linear guardedness)
    attacker_reset: int = 150  # adapter steps between re-initializations of one attacker (0: never)
    temperature: float = option(0.1, "NT-Xent temperature.")
    pairs: str = option("all", "NT-Xent pairs: static (paper) or all (static, clip and static-clip pairs).",
                        choices=PAIRS)
    max_clips: int = 32  # clips per video per step (a random window), bounds memory on long videos
    val_fraction: float = 0.15
    seed: int = option(0, "Seed of the validation part, the initialization and the batches.")
    split_seed: int = split_seed_option()
    device: str = device_option()
    progress: bool = progress_option()

    def validate(self) -> None:
        check_declared(self)
        if self.attackers < 1 or self.attacker_steps < 1 or self.attacker_reset < 0:
            raise AnonfeatError("attackers and attacker_steps must be >= 1, attacker_reset >= 0")
        if self.epochs < 1 or self.batch_size < 2:
            raise AnonfeatError("--epochs must be >= 1 and --batch-size >= 2 (NT-Xent needs negatives)")
        if self.temperature <= 0:
            raise AnonfeatError("--temperature must be positive")


@dataclass
class SanitizeOptions:
    """Flags of `anonfeat sanitize` (keyword arguments of `sanitize_store`)."""

    device: str = device_option()
    compression: str | None = option(None, "HDF5 compression of the features (default: none).", choices=COMPRESSIONS)
    progress: bool = progress_option()
    group_size: int = 128  # videos read and sanitized together

    def validate(self) -> None:
        check_declared(self)
