"""Adapter training flags, torch-free so the CLI can read their defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from anonfeat.errors import AnonfeatError

METHODS = ("aam", "leace")
PRIVACY_LOSSES = ("ntxent", "attributes", "both")
ATTRIBUTE_LOSSES = ("decorrelate", "grl")


@dataclass
class AdapterTrainOptions:
    """Flags of `anonfeat train-adapter`; defaults and their meaning: docs/cli.md#train-adapter."""

    method: str = "aam"  # "aam" (the trained adapter) or "leace" (closed-form linear eraser of --attributes)
    tasks: tuple[str, ...] = ("action",)
    attributes: list[str] | None = None
    privacy_loss: str = "ntxent"
    depth: int = 3
    heads: int = 8
    mlp_ratio: float = 2.0
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 64  # videos per step
    lr: float = 1e-3
    weight_decay: float = 0.05
    w_lc: float = 1.0
    w_t: float = 1.0
    w_b: float = 1.0
    w_attr: float = 1.0
    attr_loss: str = "decorrelate"  # supervised term: "decorrelate" (feature-attribute correlation) or "grl" (adversarial head)
    temperature: float = 0.1
    pairs: str = "all"  # "static" (the paper's), or "all": static, clip and static-clip pairs
    max_clips: int = 32  # clips per video per step (a random window), bounds memory on long videos
    val_fraction: float = 0.15
    seed: int = 0
    split_seed: int = 0  # seed of the derived split when the labels have no split column
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        if self.method not in METHODS:
            raise AnonfeatError(f"--method {self.method!r}: choose aam or leace")
        if self.privacy_loss not in PRIVACY_LOSSES:
            raise AnonfeatError(f"--privacy-loss {self.privacy_loss!r}: choose ntxent, attributes or both")
        if self.attr_loss not in ATTRIBUTE_LOSSES:
            raise AnonfeatError(f"--attr-loss {self.attr_loss!r}: choose decorrelate or grl")
        if self.pairs not in ("static", "all"):
            raise AnonfeatError(f"--pairs {self.pairs!r}: choose static or all")
        if self.epochs < 1 or self.batch_size < 2:
            raise AnonfeatError("--epochs must be >= 1 and --batch-size >= 2 (NT-Xent needs negatives)")
        if self.temperature <= 0:
            raise AnonfeatError("--temperature must be positive")
