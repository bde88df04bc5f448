"""Tiny seeded models and batches for step tests."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from gradprom.platform.gradients import flatten_grads
from gradprom.platform.models import build_enhancer, build_recognizer


def tiny(task: str = "classification", seed: int = 0, device: str | torch.device = "cpu", scale: int = 1,
         batch: int = 4, size: int = 16, classes: int = 3, norm: str = "batch"):
    """(E, R, x_lq, x_hq, y) with small random weights and data."""
    torch.manual_seed(seed)
    E = build_enhancer("unet", 1, scale, [4, 8]).to(device)
    R = build_recognizer("resnet" if task == "classification" else "unet", task, 1, classes, [4, 8],
                         norm=norm).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x_hq = torch.rand(batch, 1, size, size, generator=g)
    x_lq = x_hq + 0.1 * torch.randn(x_hq.shape, generator=g)
    if scale > 1:
        x_lq = F.avg_pool2d(x_lq, scale)
    if task == "classification":
        y = torch.randint(0, classes, (batch,), generator=g)
    else:
        y = torch.randint(0, classes, (batch, size, size), generator=g)
    return E, R, x_lq.to(device), x_hq.to(device), y.to(device)


def flat_params(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()])


def reference_gradients(E, R, x_lq, x_hq, y, lambda_e=1.0, lambda_r=0.1, task="classification"):
    """g_e, g_r (w.r.t. E) and dCE/dtheta_R from plain backward() calls on deep copies."""
    from gradprom.platform.losses import recognition_loss

    E, R = copy.deepcopy(E), copy.deepcopy(R)
    E.train(), R.train()
    x_hat = E(x_lq)
    loss_e = lambda_e * F.l1_loss(x_hat, x_hq)
    rec = recognition_loss(task)(R(x_hat), y)
    loss_r = lambda_r * rec
    ep = list(E.parameters())
    E.zero_grad()
    loss_e.backward(retain_graph=True)
    g_e = flatten_grads([p.grad for p in ep], ep).clone()
    E.zero_grad(), R.zero_grad()
    loss_r.backward()
    g_r = flatten_grads([p.grad for p in ep], ep).clone()
    rp = list(R.parameters())
    g_R = flatten_grads([p.grad for p in rp], rp) / lambda_r
    return g_e, g_r, g_R
