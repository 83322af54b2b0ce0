"""Producing one store with many ranks: the balanced split, shards, their merge (`run_sharded`).

Above the pipeline (`anonfeat.extract`): `run_store_command` runs any videos-to-store command
(extract; prune plugs in the same way) under whatever launched this process, and
`extract_sharded` is `anonfeat extract` under a launcher. The process group is `anonfeat.comm`.

Sharded store production (`run_sharded`):

1. rank 0 writes the run's header (`OUT.shards/header.h5`, the shard function called with no
   video) and refuses an `--out` or an unmerged shard made with other settings; videos complete in
   `--out` or in any shard of `OUT.shards/` are done and skipped (so a re-run with another world
   size never redoes finished work);
2. the remaining videos are probed for their length (frame count from the container header, in
   parallel over the ranks) and split deterministically, each video on exactly one rank, longest
   first onto the least loaded rank;
3. every rank writes its own shard `OUT.shards/rank-RRRRR-of-WWWWW.h5` (its own resume, its own
   failures: a bad video never stops another rank);
4. results are gathered on rank 0, which copies every complete video of every shard once into
   `--out` (a real merge with the same header), records the videos that failed, deletes the shards
   (unless asked to keep them) and sends the combined result back to every rank.
"""

from __future__ import annotations

import heapq
import os
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from anonfeat.comm import (DistContext, DistributedError, all_gather_objects, broadcast_object, gather_objects,
                           init_from_env, shutdown)
from anonfeat.device import rank_device, resolve_device
from anonfeat.errors import AnonfeatError
from anonfeat.extract import ExtractOptions, TransformMaker, extract, transform_inputs
from anonfeat.options import with_overrides
from anonfeat.paths import check_outputs
from anonfeat.store import FeatureStore, check_compatible
from anonfeat.video.decoders import select_decoder
from anonfeat.video.discover import find_videos


# -- splitting videos over ranks --------------------------------------------------------------
def probe_length(path: str | os.PathLike) -> float | None:
    """Frame count from the container header (PyAV, no decoding), or duration x frame rate;
    None when the file cannot be opened (such videos fail fast, they weigh little)."""
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.frames:
                return float(stream.frames)
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration is not None and stream.time_base is not None and rate:
                return float(stream.duration * stream.time_base) * rate
            if container.duration and rate:
                return container.duration / 1_000_000 * rate
    except Exception:  # noqa: BLE001 - any unreadable file
        return None
    return None


def video_weights(paths: Sequence[str | os.PathLike], lengths: Sequence[float | None]) -> list[float]:
    """Work estimates in frames: probed lengths; a file whose length is unknown but which exists is
    estimated from its size at the median frames-per-byte of the others; unreadable files weigh 1."""
    sizes = []
    for p in paths:
        try:
            sizes.append(os.path.getsize(p))
        except OSError:
            sizes.append(0)
    ratios = sorted(n / s for n, s in zip(lengths, sizes) if n and s)
    per_byte = ratios[len(ratios) // 2] if ratios else None
    out = []
    for n, s in zip(lengths, sizes):
        if n:
            out.append(float(n))
        elif s and per_byte:
            out.append(max(1.0, s * per_byte))
        else:
            out.append(1.0)
    return out


def split_balanced(weights: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices per rank: each index on exactly one rank, heaviest first onto the least loaded rank
    (ties: the heavier item first by position, the lowest rank). Deterministic; no padding, so a
    rank may get nothing when there are fewer videos than ranks. Each rank's indices are sorted."""
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
    heap = [(0.0, r) for r in range(world_size)]
    parts: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        load, r = heapq.heappop(heap)
        parts[r].append(i)
        heapq.heappush(heap, (load + weights[i], r))
    return [sorted(p) for p in parts]


# -- shards ------------------------------------------------------------------------------------
def shard_dir(out: str | os.PathLike) -> Path:
    """Where the shards of `out` live: `OUT.shards/` next to it."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    return shard_dir(out) / f"rank-{rank:05d}-of-{world_size:05d}.h5"


HEADER_FILE = "header.h5"


def _shard_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("rank-*-of-*.h5") if p.is_file())


def _completed(path: Path) -> set[str]:
    with FeatureStore(path) as store:
        return set(store.videos())


def _check_against(header_store: Path, other: Path, hint: str) -> None:
    with FeatureStore(header_store) as ref, FeatureStore(other) as store:
        if not store.is_initialized:
            return
        try:
            check_compatible(store.header, ref.header, other)
        except AnonfeatError as exc:
            raise AnonfeatError(f"{exc}{hint}") from None


def merge_shards(out: Path, header_store: Path, shards: Sequence[Path], compression: str | None = None) -> dict:
    """Copy every complete video of `shards` once into `out` (created with `header_store`'s header,
    or checked against it), then record as failed the videos that failed and are complete nowhere.
    Later shards win for failure messages (pass older ones first). Returns counts."""
    copied, failures = 0, {}
    with FeatureStore(header_store) as ref:
        header = ref.header
    with FeatureStore(out, "a") as dst:
        dst.initialize(header)  # refuses another encoder/checkpoint/sampling
        for shard in shards:
            with FeatureStore(shard) as src:
                for key in src.videos():
                    if not dst.is_complete(key):
                        dst.write_video(src.read_video(key), compression)
                        copied += 1
                failures.update(src.failures(with_source=True))
        recorded = 0
        for key, (error, source) in sorted(failures.items()):
            if not dst.is_complete(key):
                dst.record_failure(key, error, source)
                recorded += 1
    return {"copied": copied, "failures": recorded}


# A shard function: (videos of this rank, shard path) -> a result with fields written, skipped,
# failed, clips, total, seconds, store (ExtractResult). Called with no video, it must create the
# store with its header and nothing else.
ShardFn = Callable[[list, Path], Any]


def run_sharded(videos: Sequence, out: str | os.PathLike, run_one_shard: ShardFn, *,
                ctx: DistContext | None = None, compression: str | None = None, keep_shards: bool = False) -> Any:
    """Produce store `out` from `videos` (VideoItems) with every rank of `ctx` (`init_from_env`;
    default: this process alone) writing its own shard through `run_one_shard`, then merge on rank 0.

    Returns, on every rank, the combined result (a copy of rank 0's result type with `store=out`,
    `total`, `written`, `skipped` (done before this run), `failed` and `clips` over all ranks).
    Raises DistributedError on every rank when a rank failed (quiet except on rank 0).
    """
    ctx = ctx or DistContext()
    out = Path(out)
    directory = shard_dir(out)
    header_store = directory / HEADER_FILE
    started = time.perf_counter()
    videos = list(videos)
    keys = [v.key for v in videos]
    if len(set(keys)) != len(keys):
        raise AnonfeatError("the same video key appears twice in the input list; list each video once")

    # 1. rank 0: the header, compatibility with what exists, what is already done
    plan = None
    if ctx.is_main:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            header_store.unlink(missing_ok=True)
            run_one_shard([], header_store)
            done: set[str] = set()
            hint = f" (or delete {directory} to drop its unmerged shards)"
            if out.exists():
                _check_against(header_store, out, "")
                done |= _completed(out)
            for shard in _shard_files(directory):
                _check_against(header_store, shard, hint)
                done |= _completed(shard)
            plan = ("ok", sorted(done & set(keys)))
        except AnonfeatError as exc:
            plan = ("error", str(exc))
    plan = broadcast_object(ctx, plan)
    if plan[0] == "error":
        raise DistributedError(plan[1], quiet=not ctx.is_main)
    done = set(plan[1])
    todo = [v for v in videos if v.key not in done]

    # 2. lengths, probed in parallel (rank r probes todo[r::W]), and the split
    mine = todo[ctx.rank::ctx.world_size]
    probed = all_gather_objects(ctx, [probe_length(v.path) for v in mine])
    lengths: list[float | None] = [None] * len(todo)
    for r, values in enumerate(probed):
        lengths[r::ctx.world_size] = values
    parts = split_balanced(video_weights([v.path for v in todo], lengths), ctx.world_size)
    assigned = [todo[i] for i in parts[ctx.rank]]

    # 3. this rank's shard
    my_shard = shard_path(out, ctx.rank, ctx.world_size)
    try:
        outcome = ("ok", run_one_shard(assigned, my_shard))
    except AnonfeatError as exc:
        outcome = ("error", str(exc))

    # 4. results to rank 0, merge, combined result back to everyone
    outcomes = gather_objects(ctx, outcome)
    final = None
    if ctx.is_main:
        try:
            errors = [f"rank {r}: {o[1]}" for r, o in enumerate(outcomes) if o[0] == "error"]
            if errors:
                raise AnonfeatError("; ".join(errors) + f" (finished videos are kept in {directory}; "
                                    "fix the problem and re-run the same command to resume)")
            results = [o[1] for o in outcomes]
            current_shards = [shard_path(out, r, ctx.world_size) for r in range(ctx.world_size)]
            missing = [p for p in current_shards if not p.is_file()]
            if missing:
                raise AnonfeatError(f"{missing[0]}: a rank's shard is not visible on rank 0's node; put --out "
                                    "on a filesystem every node shares (the shards are kept there)")
            older = [p for p in _shard_files(directory) if p not in current_shards]
            merge_shards(out, header_store, [*older, *current_shards], compression)
            failed: dict[str, str] = {}
            for res in results:
                failed.update(res.failed)
            final = replace(results[0], store=out, total=len(videos),
                            written=sorted(k for res in results for k in res.written),
                            skipped=sorted(done | {k for res in results for k in res.skipped}),
                            failed=dict(sorted(failed.items())), clips=sum(res.clips for res in results),
                            seconds=time.perf_counter() - started)
            if hasattr(final, "decoder_fallbacks"):  # videos each rank's decoder left to the CPU path
                final.decoder_fallbacks = sorted(k for res in results for k in res.decoder_fallbacks)
            if not keep_shards:
                shutil.rmtree(directory, ignore_errors=True)
            final = ("ok", final)
        except AnonfeatError as exc:
            final = ("error", str(exc))
    final = broadcast_object(ctx, final)
    if final[0] == "error":
        raise DistributedError(final[1], quiet=not ctx.is_main)
    return final[1]


# -- store commands (extract; prune plugs in the same way) -------------------------------------
# run(videos, store_path, options) -> result: one process's command on a list of VideoItems.
StoreCommand = Callable[[list, Path, Any], Any]


def run_store_command(source: str | os.PathLike | Iterable, out: str | os.PathLike, options: Any,
                      run: StoreCommand, keep_shards: bool = False) -> Any:
    """Run a videos-to-store command under whatever launched this process.

    One process: `run(videos, out, options)`, today's behaviour, unless unmerged shards of an
    earlier distributed run exist next to `out` (they are then resumed and merged). Under a
    launcher: `run` per rank into its shard with `options.device` set to the rank's device and the
    progress bar on rank 0 only, then the merge (`run_sharded`). `options` needs `device`,
    `progress` and `compression` fields (a dataclass); `run` must accept an empty video list
    (header-only store) and return a result with written/skipped/failed/clips/total/seconds/store
    and `is_main` (set here: whether this process reports the run, rank 0 or the only process).
    Joins the launcher's process group and leaves it before returning.
    """
    ctx = init_from_env(partial(rank_device, options.device), backend="gloo")
    try:
        warnings: list[str] = []  # unreadable folders: reported with the result, whose exit status they make 3
        videos = find_videos(source, warnings) if isinstance(source, (str, os.PathLike)) else list(source)
        if not ctx.enabled and not shard_dir(out).is_dir():
            result = run(videos, Path(out), options)
        else:
            shard_options = replace(options, device=str(ctx.device))
            show_progress = bool(options.progress) and ctx.is_main

            def one_shard(items: list, path: Path):
                return run(items, path, replace(shard_options, progress=show_progress and bool(items)))

            result = run_sharded(videos, out, one_shard, ctx=ctx, compression=getattr(options, "compression", None),
                                 keep_shards=keep_shards)
            result = replace(result, is_main=ctx.is_main)
        if warnings and hasattr(result, "warnings"):
            result.warnings.extend(w for w in warnings if w not in result.warnings)
        return result
    finally:
        shutdown(ctx)


def extract_sharded(source: str | os.PathLike | Iterable, out: str | os.PathLike, options=None,
                    transform: TransformMaker | None = None, keep_shards: bool = False, **overrides):
    """`anonfeat extract` under any launcher (see `run_store_command`); the encoder is loaded once
    per process however many stores it writes. `transform`: as `extract`'s (e.g. an adapter's,
    `anonfeat.adapter.sanitize.adapter_transform`)."""
    options = with_overrides(options, ExtractOptions, overrides)
    check_outputs({"--out": out}, {"VIDEOS": source if isinstance(source, (str, os.PathLike)) else None,
                                   "--checkpoint": options.checkpoint, **transform_inputs(transform)})
    select_decoder(options.decoder, resolve_device(options.device))  # --decoder refused before any work
    loaded: dict = {}

    def run(items: list, path: Path, opts):
        if "encoder" not in loaded:
            from anonfeat.encoders import load_encoder

            loaded["encoder"] = load_encoder(opts.encoder, opts.checkpoint, opts.random_init,
                                             resolve_device(opts.device))
        return extract(items, path, opts, encoder=loaded["encoder"], transform=transform)

    return run_store_command(source, out, options, run, keep_shards=keep_shards)
