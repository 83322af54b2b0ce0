"""Flags of `anonfeat train-pruner` and `anonfeat prune`, torch-free so the CLI can build its flags
from them without importing torch (see anonfeat.options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from anonfeat.errors import AnonfeatError
from anonfeat.options import (CHECKPOINT_HELP, ExtractOptions, attributes_option, check_declared, check_sampling,
                              clip_len_option, decoder_option, device_option, encoder_option, frame_stride_option,
                              numbers, option, progress_option, random_init_option, resize_option,
                              sample_fps_option, split_seed_option, workers_option)

PRIVACY_LOSSES = ("auto", "attributes", "ntxent")
MASKED, ACTION_CLS = "masked", "action-cls"  # prune --features
FEATURE_KINDS = (MASKED, ACTION_CLS)
FILLS = ("black", "blur", "pixelate")  # prune --fill


@dataclass
class PrunerTrainOptions:
    """Flags of `anonfeat train-pruner`; defaults and their meaning: docs/cli.md#train-pruner."""

    encoder: str | None = encoder_option()
    checkpoint: str | None = option(None, CHECKPOINT_HELP, "-c", cli_type=Optional[Path],
                                    parse=lambda p: None if p is None else str(p))
    random_init: bool = random_init_option()
    task: str = option("action", "Utility column the action CLS learns.")
    attributes: list[str] | None = attributes_option("Attribute columns the privacy CLS learns:")
    privacy_loss: str = option("auto", "attributes (BCE through gradient reversal), ntxent (static clips, no labels "
                                       "needed) or auto (attributes when the labels have them).",
                               choices=PRIVACY_LOSSES)
    prune_blocks: tuple[int, ...] = option((), "Prune after these blocks, 1-based (default: quarters of the depth, "
                                               "3,6,9 for 12 blocks).", cli_type=Optional[str],
                                           parse=numbers(int, "--prune-blocks"), metavar="B,B,...")
    keep_rates: tuple[float, ...] = option((), "Keep rate per pruning block, or one for all (default 0.9).", "--keep",
                                           cli_type=Optional[str], parse=numbers(float, "--keep"),
                                           metavar="R,R,...")
    lam: float = option(0.5, "Score s = a_act - lambda * a_priv.", "--lambda")
    train_blocks: int | None = option(None, "Trainable last blocks (default: a third of the depth).", min=0)
    epochs: int = option(30, "Training epochs.", min=1)
    warmup_epochs: int = option(5, "Epochs before the privacy gradient is switched on.", min=0)
    batch_size: int = option(16, "Clips per step.", "-b", min=2)
    lr: float = option(1e-4, "Peak learning rate (AdamW, warm-up then cosine decay).")
    weight_decay: float = 0.05
    w_privacy: float = option(1.0, "Weight of the reversed privacy gradient.")
    temperature: float = option(0.1, "NT-Xent temperature.")
    clip_len: int | None = clip_len_option()
    frame_stride: int | None = frame_stride_option()
    sample_fps: float | None = sample_fps_option()
    resize: str = resize_option()
    flip: bool = option(False, "Mirror clips at random (not for left/right actions).", "--flip/--no-flip")
    workers: int = workers_option(2)
    val_fraction: float = 0.15
    seed: int = option(0, "Seed of the validation part, the initialization and the clip choice.")
    split_seed: int = split_seed_option()
    device: str = device_option()
    decoder: str = decoder_option()
    progress: bool = progress_option()
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        check_declared(self)
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
        check_sampling(self)


@dataclass
class PruneOptions(ExtractOptions):
    """Extract's flags, with extract's defaults (pruned and extracted stores are sampled alike), plus
    pruning's. `checkpoint`: where the source encoder's weights are (default: the path the pruner
    file recorded); `encoder` and `random_init` are not used: the pruner file names its source.
    `fill` and `lossless` shape the saved videos only, never the store (its clips are black-filled)."""

    checkpoint: str | Path | None = option(None, "Weights of the encoder the pruner was built from (default: the "
                                                 "path recorded in the pruner file; sha256 checked).", "-c",
                                           cli_type=Path)
    keep_ratio: float | None = option(None, "Keep rate for every pruning block (overrides the trained schedule; "
                                            "1.0 prunes nothing; the pruner checks the range).")
    features: str = option(MASKED, "masked: the source encoder's features of the clips with dropped tubelets black "
                                   "(what the anonymized video gives); action-cls: the pruner's own action-CLS "
                                   "features.", choices=FEATURE_KINDS)
    save_videos: str | Path | None = option(None, "Write anonymized videos here as DIR/<relative path>.mp4 (H.264, "
                                                  "source resolution, no audio).", cli_type=Optional[Path])
    fill: str = option("black", "How dropped tubelets look in saved videos: black, blur or pixelate (pixels the "
                                "model never saw stay black).", choices=FILLS)
    lossless: bool = option(False, "Saved videos as lossless yuv444p H.264 (qp 0) instead of yuv420p CRF 18 (which "
                                   "most players need).")
    save_heatmaps: str | Path | None = option(None, "Write score-map PNGs here.", cli_type=Optional[Path])

    def validate(self) -> None:
        super().validate()
        if self.sample_fps is not None and (self.save_videos is not None or self.save_heatmaps is not None):
            # anonfeat.pruning.render maps tubelets to source frames by frame_stride * tubelet_size
            raise AnonfeatError("--save-videos and --save-heatmaps follow clips by frame stride: they are not "
                                "available with --sample-fps yet; sample by --frame-stride to render videos")
