"""Decoded training clips for the pruner: labelled videos of the train split, one random clip (and,
for the self-supervised privacy loss, two static clips) per video and epoch, with augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from anonfeat.comm import row_range
from anonfeat.encoders.config import EncoderConfig
from anonfeat.errors import AnonfeatError, VideoError
from anonfeat.labels import Labels, match_videos
from anonfeat.video.discover import VideoItem, find_videos
from anonfeat.video.decoders import CPU, DecoderBackend, open_video
from anonfeat.video.sampling import Sampling, timeline
from anonfeat.video.stream import to_clips

CROP_MARGIN = 1.15  # training decodes the short side at 1.15x the input size and crops randomly


@dataclass
class LabelledVideos:
    """Videos paired with their labels: the action class and 0/1 attributes of each."""

    items: list[VideoItem]
    videos: list[str]  # the label ids of the same videos (what the pruner file records as seen)
    actions: np.ndarray  # (n,) class index
    attributes: np.ndarray  # (n, k) float32
    action_classes: list[str]
    attribute_names: list[str]
    unmatched_labels: int
    unmatched_videos: int

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, index: np.ndarray) -> "LabelledVideos":
        return LabelledVideos([self.items[i] for i in index], [self.videos[i] for i in index],
                              self.actions[index], self.attributes[index],
                              self.action_classes, self.attribute_names, self.unmatched_labels,
                              self.unmatched_videos)


def labelled_videos(source: str | Path, labels: Labels, task: str, attributes: list[str],
                    split: str = "train") -> LabelledVideos:
    """The videos under `source` whose label row is in `split` (labels without a split column carry the
    derived one, see `anonfeat.labels.stratified_split`)."""
    items = find_videos(source)
    by_key = {item.key: item for item in items}
    match = match_videos(labels, list(by_key))
    rows = [(i, key) for i, key in match.pairs if labels.split[i] == split]
    if not rows:
        raise AnonfeatError(f"{source}: no video matches a {split!r} row of {labels.source} "
                            f"({match.unmatched_labels} label rows unmatched); check --labels")
    index = np.array([i for i, _ in rows])
    return LabelledVideos(
        items=[by_key[key] for _, key in rows], videos=[labels.videos[i] for i, _ in rows], actions=labels.task_targets(task)[index],
        attributes=labels.attribute_matrix(attributes)[index].astype(np.float32),
        action_classes=labels.task_classes(task), attribute_names=list(attributes),
        unmatched_labels=match.unmatched_labels, unmatched_videos=match.unmatched_store)


class TrainingClips(Dataset):
    """Item i: video i's uint8 clip (T, s, s, 3) and labels, or None when it cannot be decoded.

    Randomness comes from (seed, epoch, i) alone, so a run is reproducible with any number of workers.
    augment=False gives the centre clip, centre crop (validation). `decoder` decodes the videos (the
    CPU path for a video whose stream it cannot decode: the item's "fallback" is then True).
    """

    def __init__(self, videos: LabelledVideos, clip_len: int, frame_stride: int | None, input_size: int,
                 resize: str = "short", augment: bool = True, statics: bool = False, flip: bool = False,
                 seed: int = 0, sample_fps: float | None = None, decoder: DecoderBackend = CPU):
        self.videos, self.clip_len = videos, clip_len
        self.decoder = decoder
        # by frames (frame_stride, default 4) or by time (sample_fps): the clips extract and prune cut
        self.sampling = Sampling(clip_len, frame_stride, resize=resize, sample_fps=sample_fps)
        self.input_size, self.resize, self.augment = input_size, resize, augment
        self.statics, self.flip, self.seed = statics, flip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict | None:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        size = self.input_size
        decode = round(size * CROP_MARGIN) if self.augment else size
        reader = None
        try:
            reader, fallback = open_video(self.decoder, self.videos.items[i].path, decode, self.resize, num_threads=1)
            n = reader.info.n_frames
            positions = timeline(n, self.sampling, reader.info.fps)
            last = max(len(positions) - self.sampling.span, 0)
            start = int(rng.integers(0, last + 1)) if self.augment else last // 2
            offsets = start + np.arange(self.clip_len) * self.sampling.step
            rows = [positions[np.minimum(offsets, len(positions) - 1)]]
            if self.statics:
                rows += [np.full(self.clip_len, f) for f in rng.choice(n, size=2, replace=n < 2)]
            frames, index = reader.frames(np.stack(rows))
        except VideoError:
            return None
        finally:
            if reader is not None:
                reader.close()
        h, w = frames.shape[1:3]
        top = int(rng.integers(0, h - size + 1)) if self.augment else (h - size) // 2
        left = int(rng.integers(0, w - size + 1)) if self.augment else (w - size) // 2
        frames = frames[:, top:top + size, left:left + size]
        if self.flip and self.augment and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        clips = np.ascontiguousarray(frames[index])  # (1 or 3, T, s, s, 3)
        return {"clip": torch.from_numpy(clips[0]), "static": torch.from_numpy(clips[1:]),
                "action": int(self.videos.actions[i]), "attributes": torch.from_numpy(self.videos.attributes[i]),
                "fallback": fallback}


def collate(items: list[dict | None], clip_shape: tuple[int, ...], n_static: int, n_attributes: int) -> dict:
    """Stack the decodable items (a batch may end up with none: its tensors then have 0 rows, which
    keeps every rank of a distributed run in step)."""
    good = [item for item in items if item is not None]
    if good:
        clip, static = torch.stack([g["clip"] for g in good]), torch.stack([g["static"] for g in good])
        attributes = torch.stack([g["attributes"] for g in good])
    else:
        clip = torch.zeros((0, *clip_shape), dtype=torch.uint8)
        static = torch.zeros((0, n_static, *clip_shape), dtype=torch.uint8)
        attributes = torch.zeros((0, n_attributes))
    return {"clip": clip, "static": static, "action": torch.tensor([g["action"] for g in good], dtype=torch.long),
            "attributes": attributes, "failed": len(items) - len(good),
            "fallbacks": sum(bool(g.get("fallback")) for g in good)}


class GlobalBatches(torch.utils.data.Sampler):
    """Seeded batches of video indices, the same on every rank; each rank yields its own rows of each
    (anonfeat.comm.row_range), so ranks together see exactly the single-process batches."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def global_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        return [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]

    def __iter__(self):
        for batch in self.global_batches():
            lo, hi = row_range(len(batch), self.rank, self.world_size)
            yield batch[lo:hi]


def normalize_clips(clips: torch.Tensor, cfg: EncoderConfig) -> torch.Tensor:
    """uint8 (B, T, s, s, 3) -> normalized (B, 3, T, s, s) with `cfg`'s mean and std, through
    extraction's own `to_clips`."""
    b, t, size = clips.shape[:3]
    device = clips.device
    index = torch.arange(b * t, device=device).view(b, t)
    return to_clips(clips.reshape(b * t, size, size, 3), index, size, torch.tensor(cfg.mean, device=device),
                    torch.tensor(cfg.std, device=device))
