"""Running on many GPUs and nodes with torch.distributed (torchrun, or Slurm through torchrun).

No scheduler of our own: the launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT and every rank runs the same command. WORLD_SIZE unset or 1 is the ordinary single
process run, unchanged.

Sharded store production (`run_sharded`, used by `anonfeat extract`):

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

Distributed training helpers: `init_from_env`, `is_main`, `all_gather_with_grad` (negatives
gathered across ranks with gradients), `nt_xent_distributed`, `row_range`.
"""

from __future__ import annotations

import datetime
import heapq
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from anonfeat.errors import AnonfeatError
from anonfeat.options import with_overrides

# Collectives wait this long (seconds) before giving up. Extraction ranks meet only at the start
# and at the end, so the fastest rank waits for the slowest one in a barrier: the default is long.
TIMEOUT_ENV = "ANONFEAT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 48 * 3600


class DistributedError(AnonfeatError):
    """An error of the distributed run, raised on every rank; only rank 0 prints it (`quiet` elsewhere)."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among `world_size` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = None  # torch.device, or None before a device was asked for
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT = DistContext()
_OWNS_GROUP = False
_GATHER_GROUP = None


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise AnonfeatError(f"environment variable {name}={value!r} is not an integer; "
                            "launch with torchrun, which sets it") from None


def env_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment; (0, 1, 0) without one."""
    world = _env_int("WORLD_SIZE", 1)
    if world is None or world <= 1:
        return 0, 1, 0
    rank = _env_int("RANK", None)
    if rank is None or not 0 <= rank < world:
        raise AnonfeatError(f"WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}; launch with torchrun "
                            "(or a launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
    return rank, world, _env_int("LOCAL_RANK", 0) or 0


def launched() -> bool:
    """True when a launcher started this process as one rank of several."""
    return env_ranks()[1] > 1


def rank_device(spec: str, local_rank: int = 0, world_size: int = 1):
    """The device of a rank. One process: `spec` as usual. Under a launcher, `auto` and `cuda[:N]`
    both mean "this rank's GPU", cuda:LOCAL_RANK (one GPU per rank); `cpu` stays on the CPU."""
    import torch

    from anonfeat.device import resolve_device

    if world_size <= 1:
        return resolve_device(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AnonfeatError(f"--device {spec}: no CUDA GPU is visible to rank {local_rank}; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise AnonfeatError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                                "start at most one rank per GPU (torchrun --nproc-per-node)")
        return torch.device("cuda", local_rank)
    return resolve_device(spec)


def _timeout() -> datetime.timedelta:
    seconds = _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    if seconds is None or seconds <= 0:
        raise AnonfeatError(f"{TIMEOUT_ENV} must be a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def init_from_env(device: str = "auto", backend: str | None = None) -> DistContext:
    """Join the launcher's process group (once per process) and pick this rank's device.

    backend: None picks nccl for CUDA and gloo for the CPU (training); extraction passes "gloo"
    (it exchanges only small Python objects). Without a launcher: a one-process context, nothing
    is initialized. A group initialized by the caller is used as is.
    """
    global _CONTEXT, _OWNS_GROUP
    import torch
    import torch.distributed as dist

    rank, world, local_rank = env_ranks()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = rank_device(device, local_rank, world)
        _CONTEXT = DistContext(rank, world, local_rank, dev, dist.get_backend())
        return _CONTEXT
    dev = rank_device(device, local_rank, world)
    if world <= 1:
        _CONTEXT = DistContext(device=dev)
        return _CONTEXT
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise AnonfeatError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun "
                                "(it sets MASTER_ADDR and MASTER_PORT) or set both to rank 0's host and a free port")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=_timeout())
    except (RuntimeError, ValueError) as exc:
        raise AnonfeatError(f"rank {rank}: cannot join the process group at "
                            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({str(exc).splitlines()[0]}); "
                            "check that every rank was started with the same MASTER_ADDR/MASTER_PORT") from None
    _OWNS_GROUP = True
    _CONTEXT = DistContext(rank, world, local_rank, dev, backend)
    return _CONTEXT


def current() -> DistContext:
    """The context set by `init_from_env` (one process, rank 0, when it was not called)."""
    return _CONTEXT


def is_main() -> bool:
    return _CONTEXT.is_main


def shutdown() -> bool:
    """Leave the process group if `init_from_env` created it. Returns whether this process was rank 0
    (or the only one): the process that reports a command's result."""
    global _CONTEXT, _OWNS_GROUP, _GATHER_GROUP
    import torch.distributed as dist

    main = _CONTEXT.is_main
    if _OWNS_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT, _OWNS_GROUP, _GATHER_GROUP = DistContext(), False, None
    return main


# -- small-object collectives (no-ops for one process) ----------------------------------------
def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    if not _CONTEXT.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list:
    if not _CONTEXT.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * _CONTEXT.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any, dst: int = 0) -> list | None:
    """Every rank's `obj` on rank `dst` (None elsewhere)."""
    if not _CONTEXT.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * _CONTEXT.world_size if _CONTEXT.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def barrier() -> None:
    if _CONTEXT.enabled:
        import torch.distributed as dist

        dist.barrier()


# -- tensors: gathering with gradients, distributed NT-Xent -----------------------------------
def row_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of `n` that `rank` takes: contiguous parts whose sizes differ by at most one
    (the first n % world ranks take one more; a rank may get none when n < world)."""
    rank = _CONTEXT.rank if rank is None else rank
    world = _CONTEXT.world_size if world_size is None else world_size
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def _gather_group():
    """A process group of its own for gathers inside forward/backward, so they never interleave
    with DDP's gradient all-reduces on the default group."""
    global _GATHER_GROUP
    import torch.distributed as dist

    if _GATHER_GROUP is None:
        _GATHER_GROUP = dist.new_group(backend=dist.get_backend())
    return _GATHER_GROUP


def _make_gather_fn():
    import torch
    import torch.distributed as dist

    class _AllGatherWithGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, local: torch.Tensor, sizes: tuple[int, ...], group) -> torch.Tensor:
            ctx.sizes, ctx.group = sizes, group
            rows = max(sizes)
            padded = local.new_zeros((rows, *local.shape[1:]))
            padded[:len(local)] = local
            parts = [torch.empty_like(padded) for _ in sizes]
            dist.all_gather(parts, padded.contiguous(), group=group)
            return torch.cat([part[:n] for part, n in zip(parts, sizes)])

        @staticmethod
        def backward(ctx, grad: torch.Tensor):
            # Every rank's loss reads every rank's rows: this rank's rows get the sum over ranks.
            grad = grad.contiguous()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
            rank = dist.get_rank()
            lo = sum(ctx.sizes[:rank])
            return grad[lo:lo + ctx.sizes[rank]], None, None

    return _AllGatherWithGrad


_GATHER_FN = None


def all_gather_with_grad(local, sizes: Sequence[int] | None = None):
    """Concatenate every rank's `local` rows in rank order, gradients flowing back to each rank.

    Ranks may hold different numbers of rows (`sizes`, gathered when not given). Backward sums the
    gradients of all ranks' losses for this rank's rows. Under DistributedDataParallel, which
    averages parameter gradients over ranks, backpropagating the same global loss on every rank
    therefore gives exactly the single-process gradient of that loss. One process: `local` itself.
    """
    global _GATHER_FN
    if not _CONTEXT.enabled:
        return local
    import torch.distributed as dist

    if sizes is None:
        sizes = [int(n) for n in all_gather_objects(len(local))]
    if _GATHER_FN is None:
        _GATHER_FN = _make_gather_fn()
    if not dist.is_initialized():
        raise AnonfeatError("all_gather_with_grad needs the process group: call anonfeat.distributed.init_from_env()")
    return _GATHER_FN.apply(local, tuple(int(n) for n in sizes), _gather_group())


def nt_xent_distributed(view_a, view_b, temperature: float = 0.1, sizes: Sequence[int] | None = None):
    """NT-Xent over the global batch: each rank passes its rows of both views; every rank gets the
    loss of the concatenated batch (negatives from all ranks) with gradients to its own rows.
    Equal to `nt_xent` on the single-process batch; one process: `nt_xent` itself."""
    from anonfeat.adapter.losses import nt_xent

    return nt_xent(all_gather_with_grad(view_a, sizes), all_gather_with_grad(view_b, sizes), temperature)


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


def _failure_records(path: Path) -> dict[str, tuple[str, str]]:
    """{key: (error, source)} of a store's /failures (the documented layout)."""
    import h5py

    out: dict[str, tuple[str, str]] = {}
    with h5py.File(path, "r") as f:
        if "failures" not in f:
            return out

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Group) and "error" in obj.attrs:
                out[name] = (str(obj.attrs["error"]), str(obj.attrs.get("source", "")))

        f["failures"].visititems(visit)
    return out


def _completed(path: Path) -> set[str]:
    from anonfeat.store import FeatureStore

    with FeatureStore(path) as store:
        return set(store.videos())


def _check_against(header_store: Path, other: Path, hint: str) -> None:
    from anonfeat.store import FeatureStore, check_compatible

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
    from anonfeat.store import FeatureStore

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
            failures.update(_failure_records(shard))
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
                compression: str | None = None, keep_shards: bool = False) -> Any:
    """Produce store `out` from `videos` (VideoItems) with every rank of the current context
    (`init_from_env`) writing its own shard through `run_one_shard`, then merge on rank 0.

    Returns, on every rank, the combined result (a copy of rank 0's result type with `store=out`,
    `total`, `written`, `skipped` (done before this run), `failed` and `clips` over all ranks).
    Raises DistributedError on every rank when a rank failed (quiet except on rank 0).
    """
    ctx = current()
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
    plan = broadcast_object(plan)
    if plan[0] == "error":
        raise DistributedError(plan[1], quiet=not ctx.is_main)
    done = set(plan[1])
    todo = [v for v in videos if v.key not in done]

    # 2. lengths, probed in parallel (rank r probes todo[r::W]), and the split
    mine = todo[ctx.rank::ctx.world_size]
    probed = all_gather_objects([probe_length(v.path) for v in mine])
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
    outcomes = gather_objects(outcome)
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
    final = broadcast_object(final)
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
    (header-only store) and return a result with written/skipped/failed/clips/total/seconds/store.
    """
    from anonfeat.video.discover import find_videos

    ctx = init_from_env(options.device, backend="gloo")
    videos = find_videos(source) if isinstance(source, (str, os.PathLike)) else list(source)
    if not ctx.enabled and not shard_dir(out).is_dir():
        return run(videos, Path(out), options)
    shard_options = replace(options, device=str(ctx.device))
    show_progress = bool(options.progress) and ctx.is_main

    def one_shard(items: list, path: Path):
        return run(items, path, replace(shard_options, progress=show_progress and bool(items)))

    return run_sharded(videos, out, one_shard, compression=getattr(options, "compression", None),
                       keep_shards=keep_shards)


def extract_sharded(source: str | os.PathLike | Iterable, out: str | os.PathLike, options=None,
                    adapter: str | os.PathLike | None = None, keep_shards: bool = False, **overrides):
    """`anonfeat extract` under any launcher (see `run_store_command`); the encoder is loaded once
    per process however many stores it writes."""
    from anonfeat.device import resolve_device
    from anonfeat.extract import ExtractOptions, extract
    from anonfeat.video.decoders import select_decoder

    options = with_overrides(options, ExtractOptions, overrides)
    select_decoder(options.decoder, resolve_device(options.device))  # --decoder refused before any work
    loaded: dict = {}

    def run(items: list, path: Path, opts):
        if "encoder" not in loaded:
            from anonfeat.encoders import load_encoder

            loaded["encoder"] = load_encoder(opts.encoder, opts.checkpoint, opts.random_init,
                                             resolve_device(opts.device))
        return extract(items, path, opts, encoder=loaded["encoder"], adapter=adapter)

    return run_store_command(source, out, options, run, keep_shards=keep_shards)
