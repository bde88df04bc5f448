"""The reducer hook: how gradients are combined across data-parallel workers before the gate decides.

The training step packs everything that needs reducing into one flat buffer (g_e, g_r, the recognizer's
gradient and the losses) and calls the reducer once, so a distributed reducer does one fused all-reduce and
every worker sees the same global gradients and takes the same gate decision. Locally nothing is reduced.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Reducer(Protocol):
    """Average a flat buffer across workers (in place or not) and return it."""

    def __call__(self, buffer: Tensor) -> Tensor: ...


class IdentityReducer:
    """One process: nothing to reduce."""

    def __call__(self, buffer: Tensor) -> Tensor:
        return buffer

    def __repr__(self) -> str:
        return "IdentityReducer()"


class AllReduceReducer:
    """Data parallelism: one all-reduce (SUM, then / world size) of the step's flat buffer across the default
    process group, so every worker gets the same global average and takes the same gate decision.

    `weight` scales this worker's buffer first: with unequal local batches (the last batch of an epoch) the
    driver sets it to world_size * n_local / n_global, which turns the average of per-worker means into the
    mean over the global batch. `calls` and `seconds` count the reductions (the benchmark's all-reduce share;
    on CUDA the time includes waiting for the queued kernels, since the all-reduce is a sync point).
    """

    def __init__(self, group=None) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("AllReduceReducer needs an initialized torch.distributed process group "
                               "(Ray Train's TorchTrainer creates one before the training function runs)")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.weight = 1.0
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, buffer: Tensor) -> Tensor:
        import time

        import torch.distributed as dist

        t0 = time.perf_counter()
        buf = buffer.contiguous()
        if self.weight != 1.0:
            buf = buf * self.weight
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)  # SUM + divide works on every backend
        buf = buf / self.world_size
        if buf.is_cuda:
            torch_cuda_sync()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return buf

    def __repr__(self) -> str:
        return f"AllReduceReducer(world_size={self.world_size})"


def torch_cuda_sync() -> None:
    """Wait for queued CUDA work (so the all-reduce timing is honest)."""
    import torch

    torch.cuda.synchronize()
