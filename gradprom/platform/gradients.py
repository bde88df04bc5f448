"""The enhancer's two gradients from one forward pass, and flat-vector helpers.

g_e and g_r are both derivatives with respect to the *enhancer's* parameters. The step computes the two
upstream gradients u_e = dL_e/dx_hat and u_r = dL_r/dx_hat at the enhanced image once, then back-propagates
both through E: either as two VJPs sharing the forward graph ("sequential") or as one batched VJP
(`is_grads_batched=True`, vmap over the backward graph). On CPU the sequential form measured faster for the
MONAI U-Nets (benchmarks/step_overhead.py prints both), so it is the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn


def flatten_grads(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """Concatenate per-parameter gradients into one flat vector (None -> zeros, for unused parameters)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def enhancer_gradient_pair(x_hat: Tensor, params: Sequence[Tensor], u_e: Tensor, u_r: Tensor,
                           vjp: Literal["sequential", "batched"] = "sequential") -> Tensor:
    """(2, P): rows g_e and g_r, the VJPs of u_e and u_r through the graph that produced x_hat."""
    u_e = u_e.to(x_hat.dtype)
    u_r = u_r.to(x_hat.dtype)
    if vjp == "batched":
        grads = torch.autograd.grad(x_hat, params, torch.stack([u_e, u_r]), is_grads_batched=True,
                                    allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros(2, *p.shape, device=p.device, dtype=p.dtype))
                          .reshape(2, -1) for g, p in zip(grads, params)], dim=1)
    g_e = torch.autograd.grad(x_hat, params, u_e, retain_graph=True, allow_unused=True)
    g_r = torch.autograd.grad(x_hat, params, u_r, allow_unused=True)
    return torch.stack([flatten_grads(g_e, params), flatten_grads(g_r, params)])


def enhancer_vjp(x_hat: Tensor, params: Sequence[Tensor], u: Tensor) -> Tensor:
    """(P,): one VJP of the upstream gradient u through the enhancer (the output-space gate's only pass)."""
    grads = torch.autograd.grad(x_hat, params, u.to(x_hat.dtype), allow_unused=True)
    return flatten_grads(grads, params)


def assign_flat_grad(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Point each parameter's `.grad` at its slice of a flat gradient vector (views, no copies; the step
    sets grads to None after each optimizer step, so nothing else holds the buffer)."""
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p)
        p.grad = g if g.dtype == p.dtype else g.to(p.dtype)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat gradient has {flat.numel()} entries, the parameters {offset}")
