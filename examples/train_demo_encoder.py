"""Train the bundled `videomae-demo` encoder on synthetic videos (reproducible, CPU, ~10 min).

Why: a random-weight encoder sees neither motion nor the actor's looks on `anonfeat synth`
videos (audit: action top-1 at chance, attribute cMAP at chance), so the demo could not show
leakage nor its removal. Real video foundation models encode both what people do and what they
look like; this stand-in is trained to do the same, supervised on action AND private attributes
of a *separate* synthetic set (seed 1000, never the demo's seed 0 videos).

    python examples/train_demo_encoder.py --out anonfeat/assets/videomae-demo.safetensors

Videos are written and decoded with anonfeat's own reader, so training sees what extraction sees.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from anonfeat.encoders import build_encoder, get_config
from anonfeat.synth import ACTIONS, ATTRIBUTES, make_benchmark
from anonfeat.video.reader import FrameReader


def decode_all(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every frame of every video at the encoder's input (short side resize + centre crop), uint8."""
    rows = list(csv.DictReader(open(root / "labels.csv")))
    frames, actions, attrs = [], [], []
    for row in rows:
        reader = FrameReader(root / "videos" / row["video"], size)
        video, _ = reader.frames(np.arange(reader.info.n_frames))
        h, w = video.shape[1:3]
        top, left = (h - size) // 2, (w - size) // 2
        frames.append(torch.from_numpy(video[:, top:top + size, left:left + size]))
        actions.append(ACTIONS.index(row["action"]))
        attrs.append([int(row[a]) for a in ATTRIBUTES])
    return torch.stack(frames), torch.tensor(actions), torch.tensor(attrs, dtype=torch.float32)


def sample_clips(frames: torch.Tensor, clip_len: int, stride: int, generator: torch.Generator) -> torch.Tensor:
    """A random clip per video (random start), normalized, as (B, 3, T, H, W)."""
    n, total = frames.shape[:2]
    span = (clip_len - 1) * stride + 1
    starts = torch.randint(0, total - span + 1, (n,), generator=generator)
    index = starts[:, None] + torch.arange(clip_len) * stride
    clips = frames[torch.arange(n)[:, None], index]  # (B, T, H, W, 3)
    return clips


def normalize(clips: torch.Tensor, cfg) -> torch.Tensor:
    mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
    return ((clips.float() / 255 - mean) / std).permute(0, 4, 1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("anonfeat/assets/videomae-demo.safetensors"))
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--frame-stride", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated videos here")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is robust on shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    cfg = get_config("videomae-demo")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anonfeat-demo-encoder-"))
    if not (work / "labels.csv").is_file():
        print(f"writing {args.videos} training videos to {work} (seed {args.seed})")
        make_benchmark(work, n_videos=args.videos, size=(128, 128), n_frames=48, fractions=(0.8, 0.1, 0.1),
                       seed=args.seed, progress=True)
    frames, actions, attrs = decode_all(work, cfg.img_size)
    split = [r["split"] for r in csv.DictReader(open(work / "labels.csv"))]
    train = torch.tensor([s == "train" for s in split])
    val = ~train
    print(f"decoded {tuple(frames.shape)}; {int(train.sum())} train / {int(val.sum())} val videos")

    encoder = build_encoder(cfg, seed=args.seed)
    heads = nn.ModuleDict({"action": nn.Linear(cfg.embed_dim, len(ACTIONS)),
                           "attributes": nn.Linear(cfg.embed_dim, len(ATTRIBUTES))})
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    steps = args.epochs * int(np.ceil(int(train.sum()) / args.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    train_idx = torch.nonzero(train).flatten()
    started = time.time()
    for epoch in range(args.epochs):
        encoder.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            batch = order[i:i + args.batch_size]
            x = normalize(sample_clips(frames[batch], cfg.clip_len, args.frame_stride, generator), cfg)
            feats = encoder(x)
            loss = F.cross_entropy(heads["action"](feats), actions[batch]) + \
                F.binary_cross_entropy_with_logits(heads["attributes"](feats), attrs[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        encoder.eval()
        with torch.no_grad():
            x = normalize(sample_clips(frames[val], cfg.clip_len, args.frame_stride, generator), cfg)
            feats = encoder(x)
            acc = float((heads["action"](feats).argmax(1) == actions[val]).float().mean())
            attr_acc = float(((heads["attributes"](feats) > 0).float() == attrs[val]).float().mean())
        print(f"epoch {epoch + 1:3d} loss {total / len(order):.3f} val action {acc:.3f} "
              f"val attributes {attr_acc:.3f} ({time.time() - started:.0f}s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(args.out), metadata={"anonfeat": "videomae-demo", "seed": str(args.seed),
                                              "epochs": str(args.epochs), "videos": str(args.videos)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
