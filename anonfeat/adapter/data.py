"""Cached store features + labels -> the tensors adapter training needs (no video is decoded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anonfeat.errors import AnonfeatError
from anonfeat.labels import Labels, match_videos
from anonfeat.store import FeatureStore, StoreHeader


@dataclass
class VideoFeatures:
    """Per-video features of the train split, aligned with labels."""

    keys: list[str]  # store keys
    videos: list[str]  # the label ids of the same videos (what model files record as seen)
    clips: list[torch.Tensor]  # (T_i, D) each
    statics: list[torch.Tensor]  # (N_i, D) each
    task_targets: dict[str, torch.Tensor]  # (n_videos,) class index per task
    task_classes: dict[str, list[str]]
    attributes: torch.Tensor  # (n_videos, k) float 0/1
    attribute_names: list[str]
    header: StoreHeader
    unmatched_labels: int
    unmatched_store: int

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: np.ndarray) -> "VideoFeatures":
        idx = torch.as_tensor(index, dtype=torch.long)
        return VideoFeatures(
            keys=[self.keys[i] for i in index], videos=[self.videos[i] for i in index],
            clips=[self.clips[i] for i in index],
            statics=[self.statics[i] for i in index],
            task_targets={t: v[idx] for t, v in self.task_targets.items()}, task_classes=self.task_classes,
            attributes=self.attributes[idx], attribute_names=self.attribute_names, header=self.header,
            unmatched_labels=self.unmatched_labels, unmatched_store=self.unmatched_store)


def read_training_features(store_path: str | Path, labels: Labels, split: str = "train") -> VideoFeatures:
    """Features of the labelled videos of `split`: label rows of other splits are never read (labels
    without a split column carry the derived one, see `anonfeat.labels.stratified_split`)."""
    with FeatureStore(store_path) as store:
        header = store.header
        match = match_videos(labels, store.videos())
        rows = [(i, key) for i, key in match.pairs if labels.split[i] == split]
        if not rows:
            raise AnonfeatError(f"{store_path}: no labelled video of the {split!r} split is in the store "
                                f"({match.unmatched_labels} label rows unmatched); check --labels")
        clips, statics = [], []
        for _, key in rows:
            record = store.read_video(key)
            if record.static_features is None:
                raise AnonfeatError(f"{store_path}: video {key!r} has no static-clip features; re-extract with "
                                    "`anonfeat extract ... --static-clips 4` (train-adapter needs them)")
            clips.append(torch.from_numpy(np.asarray(record.clip_features, dtype=np.float32)))
            statics.append(torch.from_numpy(np.asarray(record.static_features, dtype=np.float32)))
    index = np.array([i for i, _ in rows])
    tasks = {t: torch.from_numpy(labels.task_targets(t)[index]) for t in labels.tasks}
    attrs = torch.from_numpy(labels.attribute_matrix()[index].astype(np.float32))
    return VideoFeatures(keys=[k for _, k in rows], videos=[labels.videos[i] for i in index], clips=clips,
                         statics=statics, task_targets=tasks,
                         task_classes={t: labels.task_classes(t) for t in labels.tasks}, attributes=attrs,
                         attribute_names=labels.attribute_names, header=header,
                         unmatched_labels=match.unmatched_labels, unmatched_store=match.unmatched_store)
