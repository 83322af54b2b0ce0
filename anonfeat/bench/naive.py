"""The naive reference of `anonfeat bench`: how common extraction scripts work, one video at a time,
each clip decoded on its own at full resolution (decord `get_batch`, which seeks), resized with
`F.interpolate`, one clip per fp32 forward pass, each feature written as it comes."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def naive_extract(items: list, out: Path, encoder, sampling, device: torch.device) -> tuple[int, float]:
    """The common script: per video, per clip: decode the clip at full size, resize, fp32 batch of 1, write."""
    import decord
    import h5py
    import torch.nn.functional as F

    from anonfeat.video.sampling import clip_frame_indices

    cfg = encoder.config
    size = cfg.img_size
    mean = torch.tensor(cfg.mean, device=device).view(3, 1, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(3, 1, 1, 1)
    clips = 0
    started = time.perf_counter()
    with h5py.File(out, "w") as f:
        for item in items:
            reader = decord.VideoReader(str(item.path), num_threads=1)
            indices = clip_frame_indices(len(reader), sampling)
            dataset = f.create_dataset(item.key, (len(indices), cfg.embed_dim), dtype="float32")
            for row, frame_ids in enumerate(indices):
                frames = torch.from_numpy(reader.get_batch(frame_ids.tolist()).asnumpy()).to(device)
                x = frames.permute(0, 3, 1, 2).float().div(255.0)  # (T, 3, H, W)
                h, w = x.shape[-2:]
                scale = size / min(h, w)
                x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                                  mode="bilinear", align_corners=False)
                top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
                x = x[:, :, top:top + size, left:left + size].permute(1, 0, 2, 3)  # (3, T, s, s)
                x = ((x - mean) / std)[None]
                with torch.no_grad():
                    feature = encoder(x)
                dataset[row] = feature[0].cpu().numpy()
                clips += 1
    return clips, time.perf_counter() - started
