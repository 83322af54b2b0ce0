"""Pruner training flags, torch-free so the CLI can read their defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from anonfeat.errors import AnonfeatError


@dataclass
class PrunerTrainOptions:
    """Flags of `anonfeat train-pruner`; defaults and their meaning: docs/cli.md#train-pruner."""

    encoder: str | None = None
    checkpoint: str | None = None
    random_init: bool = False
    task: str = "action"
    attributes: list[str] | None = None
    privacy_loss: str = "auto"  # attributes when the labels have attribute columns, else ntxent
    prune_blocks: tuple[int, ...] = ()  # 1-based; default: quarters of the depth (3, 6, 9 of 12)
    keep_rates: tuple[float, ...] = ()  # default 0.9 at each pruning block
    lam: float = 0.5
    train_blocks: int | None = None  # last N blocks trained; None: a third of the depth (at least 1)
    epochs: int = 30
    warmup_epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.05
    w_privacy: float = 1.0
    temperature: float = 0.1
    clip_len: int | None = None
    frame_stride: int = 4
    resize: str = "short"
    flip: bool = False  # off by default: mirroring turns walk_left into walk_right
    workers: int = 2
    val_fraction: float = 0.15
    seed: int = 0
    split_seed: int = 0  # seed of the derived split when the labels have no split column
    device: str = "auto"
    decoder: str = "auto"  # auto, cpu or gpu (anonfeat.video.decoders)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.privacy_loss not in ("auto", "attributes", "ntxent"):
            raise AnonfeatError(f"--privacy-loss {self.privacy_loss!r}: choose auto, attributes or ntxent")
        if self.epochs < 1 or self.batch_size < 2:
            raise AnonfeatError("--epochs must be >= 1 and --batch-size >= 2")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise AnonfeatError(f"--warmup-epochs {self.warmup_epochs}: give 0 to --epochs ({self.epochs})")
        if self.temperature <= 0 or self.lr <= 0:
            raise AnonfeatError("--temperature and --lr must be positive")
        if self.train_blocks is not None and self.train_blocks < 0:
            raise AnonfeatError("--train-blocks must be 0 or more")
        if not 0.0 <= self.val_fraction < 1.0:
            raise AnonfeatError("the validation fraction must lie in [0, 1)")
