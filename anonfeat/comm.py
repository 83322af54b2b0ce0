"""Process-group plumbing for runs on many GPUs and nodes (torchrun, or Slurm through torchrun).

No scheduler of our own: the launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT and every rank runs the same command. WORLD_SIZE unset or 1 is the ordinary single
process run, unchanged.

The lowest layer of the package (it imports nothing of anonfeat but `errors`). Where a process
stands is a `DistContext`, returned by `init_from_env` and passed explicitly to the collectives
and to whoever needs it (trainers, the sharded store driver); a context of one process (the
default `DistContext()`) turns every collective into a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence, TypeVar

from anonfeat.errors import AnonfeatError

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
    """Where this process stands: its rank among `world_size` and the device it computes on.

    `owns_group`: `init_from_env` created the process group, so `shutdown` leaves it. `groups`
    caches the extra process groups made for this context (see `all_gather_with_grad`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = None  # torch.device, or None before a device was asked for
    backend: str | None = None
    owns_group: bool = False
    groups: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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


def _timeout() -> datetime.timedelta:
    seconds = _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    if seconds is None or seconds <= 0:
        raise AnonfeatError(f"{TIMEOUT_ENV} must be a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


# pick_device(local_rank, world_size) -> this rank's torch.device (anonfeat.device.rank_device)
DevicePicker = Callable[[int, int], Any]


def init_from_env(pick_device: DevicePicker, backend: str | None = None) -> DistContext:
    """Join the launcher's process group and pick this rank's device with `pick_device`.

    backend: None picks nccl for CUDA and gloo for the CPU (training); extraction passes "gloo"
    (it exchanges only small Python objects). Without a launcher: a one-process context, nothing
    is initialized. A group initialized by the caller is used as is (and left to the caller).
    """
    import torch
    import torch.distributed as dist

    rank, world, local_rank = env_ranks()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = pick_device(local_rank, world)
        return DistContext(rank, world, local_rank, dev, dist.get_backend())
    dev = pick_device(local_rank, world)
    if world <= 1:
        return DistContext(device=dev)
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
    return DistContext(rank, world, local_rank, dev, backend, owns_group=True)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if `init_from_env` created it for `ctx` (no-op otherwise)."""
    if not ctx.owns_group:
        return
    import torch.distributed as dist

    ctx.groups.clear()
    if dist.is_initialized():
        dist.destroy_process_group()


T = TypeVar("T")


def run_in_group(pick_device: DevicePicker, run: Callable[..., T], *args: Any) -> T:
    """`run(ctx, *args)` inside the launcher's process group (one process without a launcher),
    leaving the group afterwards even when `run` raises: the trainers' entry points."""
    ctx = init_from_env(pick_device)
    try:
        return run(ctx, *args)
    finally:
        shutdown(ctx)


# -- small-object collectives (no-ops for one process) ----------------------------------------
def broadcast_object(ctx: DistContext, obj: Any = None, src: int = 0) -> Any:
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(ctx: DistContext, obj: Any) -> list:
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_objects(ctx: DistContext, obj: Any, dst: int = 0) -> list | None:
    """Every rank's `obj` on rank `dst` (None elsewhere)."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world_size if ctx.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean(ctx: DistContext, tensor):
    """The mean of `tensor` over the ranks (as DistributedDataParallel averages gradients); one
    process: `tensor` itself."""
    if not ctx.enabled:
        return tensor
    import torch.distributed as dist

    tensor = tensor.contiguous()
    dist.all_reduce(tensor)
    return tensor / ctx.world_size


# -- tensors: gathering with gradients ---------------------------------------------------------
def row_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [lo, hi) of `n` that `rank` takes: contiguous parts whose sizes differ by at most one
    (the first n % world ranks take one more; a rank may get none when n < world)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def row_sizes(n: int, world_size: int) -> list[int]:
    """The number of rows of `n` each rank takes (`row_range`)."""
    return [hi - lo for lo, hi in (row_range(n, r, world_size) for r in range(world_size))]


def _gather_group(ctx: DistContext):
    """A process group of its own for gathers inside forward/backward, so they never interleave
    with DDP's gradient all-reduces on the default group."""
    import torch.distributed as dist

    if "gather" not in ctx.groups:
        ctx.groups["gather"] = dist.new_group(backend=dist.get_backend())
    return ctx.groups["gather"]


@lru_cache(maxsize=None)
def _gather_function():
    """The autograd Function behind `all_gather_with_grad` (defined on first use: torch is imported then)."""
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


def all_gather_with_grad(ctx: DistContext, local, sizes: Sequence[int] | None = None):
    """Concatenate every rank's `local` rows in rank order, gradients flowing back to each rank.

    Ranks may hold different numbers of rows (`sizes`, gathered when not given). Backward sums the
    gradients of all ranks' losses for this rank's rows. Under DistributedDataParallel, which
    averages parameter gradients over ranks, backpropagating the same global loss on every rank
    therefore gives exactly the single-process gradient of that loss. One process: `local` itself.
    """
    if not ctx.enabled:
        return local
    import torch.distributed as dist

    if sizes is None:
        sizes = [int(n) for n in all_gather_objects(ctx, len(local))]
    if not dist.is_initialized():
        raise AnonfeatError("all_gather_with_grad needs the process group: call anonfeat.comm.init_from_env()")
    return _gather_function().apply(local, tuple(int(n) for n in sizes), _gather_group(ctx))
