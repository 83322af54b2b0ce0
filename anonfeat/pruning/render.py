"""Anonymized videos and score heatmaps from a pruned video's kept tubelets.

Geometry: the pruner saw, for each clip, a square crop of the frame (resize "short": the centre
square of side min(H, W) scaled to the input size; "full": the whole frame stretched). Its tubelet
grid (t, h, w) tiles that crop; temporal tubelet j of a clip spans the source frames from its
first sampled frame up to the next tubelet's first one (frame_stride * tubelet_size frames).
A source pixel is kept only when a kept tubelet covers it in every clip covering its frame;
pixels outside the crop and frames no clip covers are black whatever the fill: the model never
vetted them. Dropped pixels the model did see are black, blurred or pixelated (`fill`).

Files: H.264 .mp4, yuv420p CRF 18 by default (what browsers and players open); yuv420p needs even
sizes, so odd frames get one black row (bottom) and/or column (right), the content staying at the
top-left. `lossless`: yuv444p qp 0 at the source size, pixels back within YUV rounding. Audio is never
copied: voices identify people and nothing here anonymizes sound.
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
    return _frame_grids(n_frames, sampling, kept, cfg)[0]


def _frame_grids(n_frames: int, sampling: Sampling, kept: np.ndarray, cfg: EncoderConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(keep masks as `frame_grids`, (n_frames,) whether any clip covers the frame)."""
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
    return masks, covered


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


def blurred(frame: np.ndarray, cell: float) -> np.ndarray:
    """`frame` averaged over boxes of about half a tubelet cell (`cell` pixels) and smoothly scaled
    back: the fine detail of a face or a text is gone, colours and layout remain."""
    from PIL import Image

    height, width = frame.shape[:2]
    factor = max(cell / 2.0, 1.0)
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    image = Image.fromarray(frame).resize(small, Image.Resampling.BOX)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def pixelated(frame: np.ndarray, rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    """Every tubelet cell of `frame` (through the pixel->cell maps) filled with its mean colour;
    pixels outside the grid stay as they are."""
    inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    cell = np.where(inside, rows[:, None] * n_cols + cols[None, :], 0)
    n_cells = int(cell.max()) + 1
    counts = np.bincount(cell[inside], minlength=n_cells).astype(np.float64)
    means = np.stack([np.bincount(cell[inside], weights=frame[..., c][inside], minlength=n_cells)
                      for c in range(3)], axis=1) / np.maximum(counts, 1)[:, None]
    out = frame.copy()
    out[inside] = np.round(means[cell[inside]]).astype(np.uint8)
    return out


def anonymized_frame(frame: np.ndarray, keep: np.ndarray, seen: np.ndarray, fill: str, cfg: EncoderConfig,
                     cells: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One output frame: `keep` (H, W) pixels as they are, seen-but-dropped pixels filled, the rest
    (never seen by the model) black."""
    out = frame * keep[..., None].astype(np.uint8)
    dropped = seen & ~keep
    if fill != "black" and dropped.any():
        rows, cols = cells
        if fill == "blur":
            side = np.count_nonzero(rows >= 0) / cfg.grid[1]  # source pixels per cell along a column
            filled = blurred(frame * seen[..., None].astype(np.uint8), side)  # never-seen pixels do not bleed in
        elif fill == "pixelate":
            filled = pixelated(frame, rows, cols, cfg.grid[2])
        else:
            raise ValueError(f"unknown fill {fill!r}: choose black, blur or pixelate")
        out[dropped] = filled[dropped]
    return out


def write_anonymized_video(source: str | Path, out: str | Path, n_frames: int, fps: float, sampling: Sampling,
                           kept: np.ndarray, cfg: EncoderConfig, fill: str = "black", lossless: bool = False) -> None:
    """Re-encode `source` at its resolution (padded to even sizes unless `lossless`) with every pixel
    of a dropped tubelet black, blurred or pixelated (`fill`); no audio."""
    from anonfeat.video.writer import VideoWriter, read_frames

    masks, covered = _frame_grids(n_frames, sampling, kept, cfg)
    out = Path(out)
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    writer, cells, inside, pad = None, None, None, (0, 0)
    try:
        for index, frame in enumerate(read_frames(source)):
            if writer is None:
                height, width = frame.shape[:2]
                pad = (0, 0) if lossless else (height % 2, width % 2)
                writer = VideoWriter(tmp, fps if fps > 0 else 25.0, width + pad[1], height + pad[0],
                                     lossless=lossless)
                cells = pixel_cells(height, width, cfg, sampling.resize)
                inside = (cells[0][:, None] >= 0) & (cells[1][None, :] >= 0)
            if index < n_frames:
                keep = pixel_mask(masks[index], *cells)
                seen = inside & covered[index]
            else:  # frames beyond the probed count: never seen
                keep = seen = np.zeros(frame.shape[:2], dtype=bool)
            image = anonymized_frame(frame, keep, seen, fill, cfg, cells)
            if any(pad):
                image = np.pad(image, ((0, pad[0]), (0, pad[1]), (0, 0)))
            writer.write(image)
        if writer is None:
            raise ValueError(f"{source}: no frame could be decoded for the anonymized copy")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)  # the output folder holds finished videos only
        raise
    tmp.replace(out)  # a crash never leaves a half-written video under the final name


def heatmap_figure(views: np.ndarray, frames: np.ndarray, scores: list[np.ndarray], kept: list[np.ndarray],
                   blocks: list[int], cfg: EncoderConfig, title: str):
    """One clip's figure: the frames the pruner saw (one column per temporal tubelet), then one row per
    pruning stage with its score map over the frame, dropped tubelets greyed out. Every score map of
    the figure shares one colour scale (min..max over all stages), shown by one colour bar, so stages
    and frames compare by colour."""
    import matplotlib.pyplot as plt

    t, gh, gw = cfg.grid
    stage_scores = [np.asarray(sc, dtype=np.float32).reshape(t, gh, gw) for sc in scores]
    stage_dropped = [~kept_grid(kp, cfg.grid) for kp in kept]
    finite = np.concatenate([sc[np.isfinite(sc)] for sc in stage_scores]) if stage_scores else np.zeros(0)
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1e-6
    extent = (0, cfg.img_size, cfg.img_size, 0)
    fig, axes = plt.subplots(len(blocks) + 1, t, figsize=(1.6 * t + 1.0, 1.6 * (len(blocks) + 1)), squeeze=False)
    mappable = None
    for j in range(t):
        axes[0, j].imshow(views[j])
        axes[0, j].set_title(f"frame {int(frames[j])}", fontsize=7)
        for s, block in enumerate(blocks):
            ax = axes[s + 1, j]
            ax.imshow(views[j], alpha=0.35)
            mappable = ax.imshow(np.ma.masked_invalid(stage_scores[s][j]), cmap="magma", alpha=0.65, extent=extent,
                                 interpolation="nearest", vmin=low, vmax=high)
            ax.imshow(np.where(stage_dropped[s][j], 0.6, np.nan), cmap="gray", vmin=0, vmax=1, alpha=0.8,
                      extent=extent, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(f"block {block}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}: score a_act - lambda a_priv (grey: dropped)", fontsize=8)
    fig.tight_layout()
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=axes[1:, :].ravel().tolist(), fraction=0.02, pad=0.01)
        bar.set_label("tubelet score", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig


def save_heatmaps(source: str | Path, out_dir: str | Path, n_frames: int, sampling: Sampling,
                  kept: list[np.ndarray], scores: list[np.ndarray], blocks: list[int], cfg: EncoderConfig,
                  max_clips: int = 4) -> list[Path]:
    """One PNG per clip (up to `max_clips`, evenly spread): the frames the pruner saw, one column per
    temporal tubelet; one row per pruning stage with its score map, dropped tubelets greyed out, on one
    colour scale per figure (`heatmap_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anonfeat.video.reader import FrameReader

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = clip_frame_indices(n_frames, sampling)
    chosen = np.unique(np.linspace(0, len(clips) - 1, min(max_clips, len(clips))).round().astype(int))
    t = cfg.grid[0]
    shown = clips[chosen][:, :: cfg.tubelet_size][:, :t]  # first frame of each temporal tubelet
    reader = FrameReader(source, cfg.img_size, sampling.resize)
    try:
        frames, index = reader.frames(shown)
    finally:
        reader.close()
    h, w = frames.shape[1:3]
    top, left = (h - cfg.img_size) // 2, (w - cfg.img_size) // 2  # the centre crop the pruner saw
    views = frames[:, top:top + cfg.img_size, left:left + cfg.img_size][index]  # (clips, t, s, s, 3)
    written = []
    for row, c in enumerate(chosen):
        fig = heatmap_figure(views[row], shown[row], [sc[c] for sc in scores], [kp[c] for kp in kept], blocks, cfg,
                             f"{Path(source).name} clip {int(c)}")
        path = out_dir / f"clip_{int(c):04d}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written
