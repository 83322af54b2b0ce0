"""Random-drop control of a pruned store: the same pruner and keep rates, the same number of tubelets
blackened at each pruning block, but chosen at random instead of by the pruner's scores.

Against `prune` at the same keep rate it separates what a pruned release loses by *how many* tubelets
it blackens from what it loses by *which* ones. Used by scripts/validate.sh; the choice is seeded by
each clip's content, so re-runs and batch sizes give the same store.

    python scripts/random_drop_control.py VIDEOS --pruner P --out STORE [--keep-ratio K] [prune flags]
"""

from __future__ import annotations

import argparse
import dataclasses
import zlib
from pathlib import Path

import torch

from anonfeat.pruning.io import load_pruner
from anonfeat.pruning.model import PrunerOutput
from anonfeat.pruning.run import prune


class RandomDrop(torch.nn.Module):
    """Wraps a pruner: its outputs, with every stage's kept positions replaced by a random subset of
    the previous stage's of the same size (what the masked-clip store reads)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, clips: torch.Tensor, keep_ratio: float | None = None) -> PrunerOutput:
        out = self.model(clips, keep_ratio)
        if not out.kept:
            return out
        n_total = out.scores[0].shape[1]
        stages: list[list[torch.Tensor]] = [[] for _ in out.kept]
        for row, clip in enumerate(clips):
            seed = zlib.crc32(clip.detach().to(torch.float16).cpu().numpy().tobytes())
            generator = torch.Generator().manual_seed(seed)
            positions = torch.arange(n_total)
            for stage, kept in enumerate(out.kept):
                pick = torch.randperm(len(positions), generator=generator)[:kept.shape[1]]
                positions = positions[pick].sort().values
                stages[stage].append(positions)
        kept = [torch.stack(rows).to(out.kept[0].device, out.kept[0].dtype) for rows in stages]
        return dataclasses.replace(out, kept=kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", type=Path)
    parser.add_argument("--pruner", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep-ratio", type=float, default=None)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--frame-stride", type=int, default=None)
    parser.add_argument("--clip-stride", type=int, default=None)
    parser.add_argument("--static-clips", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    loaded = load_pruner(args.pruner, "cpu")
    control = dataclasses.replace(loaded, model=RandomDrop(loaded.model))
    result = prune(args.videos, args.out, control, keep_ratio=args.keep_ratio, checkpoint=args.checkpoint,
                   frame_stride=args.frame_stride, clip_stride=args.clip_stride, static_clips=args.static_clips,
                   batch_size=args.batch_size, workers=0, device="cpu", progress=False)
    print(f"{args.out}: {len(result.written)} written, {len(result.failed)} failed (random-drop control)")


if __name__ == "__main__":
    main()
