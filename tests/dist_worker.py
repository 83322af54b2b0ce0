"""Code run inside the ranks of tests/test_distributed.py (kept light: torch, anonfeat.comm and the losses)."""

from __future__ import annotations

from functools import partial

import torch

from anonfeat import comm
from anonfeat.device import rank_device
from anonfeat.nn.losses import nt_xent_distributed


def gradient_worker(out: str) -> None:
    """One rank (or the single process): a linear layer on this rank's rows of a 7-row batch (2 ranks:
    4 and 3 rows), NT-Xent with negatives from all ranks plus a mean over the gathered rows, then
    the parameter gradients averaged over ranks as DistributedDataParallel does (all-reduce / W;
    the DDP wrapper itself is exercised by the train-adapter test, its construction costs seconds
    of imports). Rank 0 writes loss and gradients."""
    ctx = comm.init_from_env(partial(rank_device, "cpu"))
    torch.manual_seed(0)
    x1, x2 = torch.randn(7, 8), torch.randn(7, 8)
    model = torch.nn.Linear(8, 6)
    lo, hi = comm.row_range(7, ctx.rank, ctx.world_size)
    z = model(torch.cat([x1[lo:hi], x2[lo:hi]]))
    a, b = z[:hi - lo], z[hi - lo:]
    mse = comm.all_gather_with_grad(ctx, a).pow(2).mean()  # like the adapter's gathered terms
    loss = nt_xent_distributed(ctx, a, b, 0.5) + mse
    loss.backward()
    for p in model.parameters():
        p.grad = comm.all_reduce_mean(ctx, p.grad)
    if ctx.is_main:
        torch.save({"loss": loss.detach(), "weight": model.weight.grad, "bias": model.bias.grad}, out)
    comm.shutdown(ctx)
