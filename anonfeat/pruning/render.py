"""Anonymized videos and score heatmaps from a pruned video's kept tubelets.

Geometry: the pruner saw, for each clip, a square crop of the frame (resize "short": the centre
square of side min(H, W) scaled to the input size; "full": the whole frame stretched). Its tubelet
grid (t, h, w) tiles that crop; temporal tubelet j of a clip spans the source frames from its
first sampled frame up to the next tubelet's first one (frame_stride * tubelet_size frames).
A source pixel is kept only when a kept tubelet covers it in every clip covering its frame;
pixels outside the crop and frames no clip covers are black: the model never vetted them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anonfeat.encoders.config import EncoderConfig
from anonfeat.video.sampling import Sampling, clip_frame_indices


def kept_grid(kept: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Kept tubelet positions (k,) -> boolean (t, h, w) grid."""
    mask = np.zeros(int(np.prod(grid)), dtype=bool)
    mask[np.asarray(kept, dtype=np.int64)] = True
    return mask.reshape(grid)


def frame_grids(n_frames: int, sampling: Sampling, kept: np.ndarray, cfg: EncoderConfig) -> np.ndarray:
    """(n_frames, h, w) boolean: the tubelet-grid keep mask of every source frame.

    kept: (n_clips, k) final-stage kept positions of each clip, in `clip_frame_indices` order.
    """
    grid = cfg.grid
    clips = clip_frame_indices(n_frames, sampling)
    covered = np.zeros(n_frames, dtype=bool)
    masks = np.ones((n_frames, grid[1], grid[2]), dtype=bool)
    extent = cfg.tubelet_size * sampling.frame_stride
    for frames, kept_positions in zip(clips, kept):
        keep = kept_grid(kept_positions, grid)
        for j in range(grid[0]):
            first = int(frames[j * cfg.tubelet_size])
            last = min(first + extent, n_frames)
            masks[first:last] &= keep[j]
            covered[first:last] = True
    masks[~covered] = False
    return masks


def pixel_cells(height: int, width: int, cfg: EncoderConfig, resize: str) -> tuple[np.ndarray, np.ndarray]:
    """Grid row of each pixel row and grid column of each pixel column (-1 outside the crop)."""
    gh, gw = cfg.grid[1:]
    if resize == "full":
        rows = np.arange(height) * gh // height
        cols = np.arange(width) * gw // width
        return rows, cols
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    rows = (np.arange(height) - top) * gh // side
    cols = (np.arange(width) - left) * gw // side
    rows[(rows < 0) | (rows >= gh)] = -1
    cols[(cols < 0) | (cols >= gw)] = -1
    return rows, cols


def pixel_mask(grid_mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(h, w) grid mask -> (H, W) pixel mask through the pixel->cell maps."""
    padded = np.zeros((grid_mask.shape[0] + 1, grid_mask.shape[1] + 1), dtype=bool)
    padded[:-1, :-1] = grid_mask  # index -1 lands on the False padding row/column
    return padded[rows[:, None], cols[None, :]]


def write_anonymized_video(source: str | Path, out: str | Path, n_frames: int, fps: float, sampling: Sampling,
                           kept: np.ndarray, cfg: EncoderConfig) -> None:
    """Re-encode `source` at its resolution with every pixel of a dropped tubelet set to black. Frames are
    read upright (the source's display rotation applied, as for the model) and written upright without a
    display matrix, so the masks fall where the model saw and every player shows the copy as the source."""
    from anonfeat.video.reader import iter_upright_frames
    from anonfeat.video.writer import VideoWriter

    masks = frame_grids(n_frames, sampling, kept, cfg)
    out = Path(out)
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    writer, cells = None, None
    try:
        for index, frame in enumerate(iter_upright_frames(source)):
            if writer is None:
                height, width = frame.shape[:2]
                writer = VideoWriter(tmp, fps if fps > 0 else 25.0, width, height, lossless=True)
                cells = pixel_cells(height, width, cfg, sampling.resize)
            grid_mask = masks[min(index, n_frames - 1)] if index < n_frames else np.zeros_like(masks[0])
            writer.write(frame * pixel_mask(grid_mask, *cells)[..., None].astype(np.uint8))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"{source}: no frame could be decoded for the anonymized copy")
    tmp.replace(out)  # a crash never leaves a half-written video under the final name


def save_heatmaps(source: str | Path, out_dir: str | Path, n_frames: int, sampling: Sampling,
                  kept: list[np.ndarray], scores: list[np.ndarray], blocks: list[int], cfg: EncoderConfig,
                  max_clips: int = 4) -> list[Path]:
    """One PNG per clip (up to `max_clips`, evenly spread): the frames the pruner saw, one column per
    temporal tubelet; one row per pruning stage with its score map, dropped tubelets greyed out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anonfeat.video.reader import FrameReader

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = clip_frame_indices(n_frames, sampling)
    chosen = np.unique(np.linspace(0, len(clips) - 1, min(max_clips, len(clips))).round().astype(int))
    t, gh, gw = cfg.grid
    shown = clips[chosen][:, :: cfg.tubelet_size][:, :t]  # first frame of each temporal tubelet
    reader = FrameReader(source, cfg.img_size, sampling.resize)
    try:
        frames, index = reader.frames(shown)
    finally:
        reader.close()
    h, w = frames.shape[1:3]
    top, left = (h - cfg.img_size) // 2, (w - cfg.img_size) // 2  # the centre crop the pruner saw
    views = frames[:, top:top + cfg.img_size, left:left + cfg.img_size][index]  # (clips, t, s, s, 3)
    extent = (0, cfg.img_size, cfg.img_size, 0)
    written = []
    for row, c in enumerate(chosen):
        stage_scores = [sc[c].astype(np.float32).reshape(t, gh, gw) for sc in scores]
        stage_dropped = [~kept_grid(kp[c], cfg.grid) for kp in kept]
        fig, axes = plt.subplots(len(blocks) + 1, t, figsize=(1.6 * t, 1.6 * (len(blocks) + 1)), squeeze=False)
        for j in range(t):
            axes[0, j].imshow(views[row, j])
            axes[0, j].set_title(f"frame {int(shown[row, j])}", fontsize=7)
            for s, block in enumerate(blocks):
                ax = axes[s + 1, j]
                ax.imshow(views[row, j], alpha=0.35)
                ax.imshow(np.ma.masked_invalid(stage_scores[s][j]), cmap="magma", alpha=0.65, extent=extent,
                          interpolation="nearest", vmin=np.nanmin(stage_scores[s]), vmax=np.nanmax(stage_scores[s]))
                ax.imshow(np.where(stage_dropped[s][j], 0.6, np.nan), cmap="gray", vmin=0, vmax=1, alpha=0.8,
                          extent=extent, interpolation="nearest")
                if j == 0:
                    ax.set_ylabel(f"block {block}", fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{Path(source).name} clip {int(c)}: score a_act - lambda a_priv (grey: dropped)", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"clip_{int(c):04d}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written
