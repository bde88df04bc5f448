"""Seeded gradient pairs for the strategy tests: aligned, opposed, orthogonal, zero, scaled; all on the test
device (GRADPROM_TEST_DEVICE, as the `device` fixture), so the same tests run on a GPU machine."""

from __future__ import annotations

import os
from functools import partial

import torch

DEVICE = torch.device(os.environ.get("GRADPROM_TEST_DEVICE", "cpu"))
# tensor factories on the test device (torchjd's tests/utils/tensors.py habit)
tensor_ = partial(torch.tensor, device=DEVICE)
zeros_ = partial(torch.zeros, device=DEVICE)
ones_ = partial(torch.ones, device=DEVICE)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def pair_with_cosine(cos: float, n: int = 257, seed: int = 0, scale_e: float = 1.0, scale_r: float = 1.0):
    """(g_e, g_r) with exactly the given cosine (up to float error)."""
    g = torch.Generator().manual_seed(seed)
    a = _unit(torch.randn(n, generator=g, dtype=torch.float64))
    b = torch.randn(n, generator=g, dtype=torch.float64)
    b = _unit(b - (b @ a) * a)
    r = cos * a + (1 - cos ** 2) ** 0.5 * b
    return (scale_e * a).float().to(DEVICE), (scale_r * r).float().to(DEVICE)


def typical_pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    out = []
    for name, c in [("aligned", 0.9), ("weakly-aligned", 0.1), ("orthogonal", 0.0), ("weakly-opposed", -0.1),
                    ("opposed", -0.9), ("anti-parallel", -1.0), ("parallel", 1.0)]:
        out.append((name, *pair_with_cosine(c, seed=len(out))))
    for s in (1e-6, 1e3, 1e12):
        out.append((f"scaled-{s:g}", *pair_with_cosine(0.3, seed=7, scale_e=s, scale_r=1.0)))
        out.append((f"r-scaled-{s:g}", *pair_with_cosine(-0.3, seed=8, scale_e=1.0, scale_r=s)))
    z = zeros_(257)
    g_e, g_r = pair_with_cosine(0.5, seed=11)
    out += [("zero-e", z.clone(), g_r), ("zero-r", g_e, z.clone()), ("zero-both", z.clone(), z.clone())]
    return out
