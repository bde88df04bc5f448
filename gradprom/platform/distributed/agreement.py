"""Agreement across Ray Train ranks: every rank must take the same gate decisions and hold the same weights
(the fused all-reduce makes them so; these checks prove it each epoch, or each step with `sync_check: step`)."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def checksum(enhancer: torch.nn.Module, recognizer: torch.nn.Module) -> int:
    """64 bits of a hash of E's weights and buffers and R's weights (bit-identical <=> equal, practically).

    R's buffers are left out: batch-norm running statistics are per worker (each sees its own images).
    """
    h = hashlib.blake2b(digest_size=8)
    for t in [*enhancer.state_dict().values(), *recognizer.parameters()]:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def gather(t: torch.Tensor, world: int) -> torch.Tensor:
    """all_gather of a 1-D tensor -> (world, len)."""
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return torch.stack(out)


def mismatches(values: torch.Tensor, world: int) -> int:
    """How many entries differ between some rank and rank 0 (NaN == NaN)."""
    g = gather(values, world)
    same = (g == g[0]) | (torch.isnan(g) & torch.isnan(g[0])) if g.is_floating_point() else g == g[0]
    return int((~same.all(0)).sum())


def broadcast_models(models, device: torch.device) -> None:
    """Rank 0's weights and buffers to every rank (seeded init is identical already; this makes it certain)."""
    for m in (models.enhancer, models.recognizer):
        for t in m.state_dict().values():
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                dist.broadcast(t.data, src=0)
