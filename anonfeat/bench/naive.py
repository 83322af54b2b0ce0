"""The naive reference of `anonfeat bench`: how common extraction scripts work, one video at a time,
each clip decoded on its own at full resolution (decord `get_batch`, which seeks; PyAV seeking to the
clip's keyframe when decord is not installed), resized with `F.interpolate`, one clip per fp32 forward
pass, each feature written as it comes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def naive_clip_reader(path: Path):
    """(frame count, read(frame_ids) -> (T, H, W, 3) uint8 at full size) the way common scripts do it:
    decord's `get_batch` (it seeks per call) when decord is installed, else PyAV seeking to the
    keyframe before each clip and decoding forward to its last frame."""
    from anonfeat.video.reader import _import_decord

    decord = _import_decord()
    if decord is not None:
        reader = decord.VideoReader(str(path), num_threads=1)
        return len(reader), lambda ids: reader.get_batch(ids).asnumpy()
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)

    def read(ids: list[int]) -> np.ndarray:
        wanted = {pts[i]: i for i in ids}
        frames: dict[int, np.ndarray] = {}
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            container.seek(pts[min(ids)], stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts in wanted:
                    frames[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
                if frame.pts is not None and frame.pts >= pts[max(ids)]:
                    break
        return np.stack([frames[i] for i in ids])

    return len(pts), read


def naive_decoder_name() -> str:
    """What decodes the naive reference here: "decord" when installed, else "pyav"."""
    from anonfeat.video.reader import _import_decord

    return "decord" if _import_decord() is not None else "pyav"


def naive_extract(items: list, out: Path, encoder, sampling, device: torch.device) -> tuple[int, float]:
    """The common script: per video, per clip: decode the clip at full size, resize, fp32 batch of 1, write."""
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
            n_frames, read = naive_clip_reader(item.path)
            indices = clip_frame_indices(n_frames, sampling)
            dataset = f.create_dataset(item.key, (len(indices), cfg.embed_dim), dtype="float32")
            for row, frame_ids in enumerate(indices):
                frames = torch.from_numpy(read(frame_ids.tolist())).to(device)
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
