"""Code run inside the ranks of tests/test_distributed.py (kept light: torch and anonfeat.distributed)."""

from __future__ import annotations

import torch

from anonfeat import distributed
from anonfeat.distributed import row_range


def gradient_worker(out: str) -> None:
    """One rank (or the single process): a linear layer on this rank's rows of a 7-row batch (2 ranks:
    4 and 3 rows), NT-Xent with negatives from all ranks plus a mean over the gathered rows, then
    the parameter gradients averaged over ranks as DistributedDataParallel does (all-reduce / W;
    the DDP wrapper itself is exercised by the train-adapter test, its construction costs seconds
    of imports). Rank 0 writes loss and gradients."""
    import torch.distributed as dist

    ctx = distributed.init_from_env("cpu")
    torch.manual_seed(0)
    x1, x2 = torch.randn(7, 8), torch.randn(7, 8)
    model = torch.nn.Linear(8, 6)
    lo, hi = row_range(7)
    z = model(torch.cat([x1[lo:hi], x2[lo:hi]]))
    a, b = z[:hi - lo], z[hi - lo:]
    mse = distributed.all_gather_with_grad(a).pow(2).mean()  # like the adapter's gathered terms
    loss = distributed.nt_xent_distributed(a, b, 0.5) + mse
    loss.backward()
    if ctx.enabled:
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= ctx.world_size
    if ctx.is_main:
        torch.save({"loss": loss.detach(), "weight": model.weight.grad, "bias": model.bias.grad}, out)
    distributed.shutdown()
