"""The strategy interface: (g_e, g_r) -> the enhancer's update, plus what the gate saw.

A strategy gets the enhancer's flat enhancement gradient g_e and task gradient g_r (already reduced across
workers) and returns the update direction. Decisions stay tensors (no `.item()`), so a step on a GPU does not
synchronise inside the gate; the training step reads them once, for logging.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Decision:
    """What a strategy decided for one step."""

    update: Tensor  # (P,) the enhancer's update direction
    cos: Tensor  # () global cos(g_e, g_r); 0 when either norm is 0
    gate_open: Tensor  # () 1/0 for a gate, share of layers open in layer mode, NaN for non-gating aggregators
    layer_open: Tensor | None = None  # (L,) 1/0 per parameter tensor in layer mode


class ParamLayout:
    """Where each enhancer parameter tensor sits in the flat gradient vector (for per-layer decisions)."""

    def __init__(self, names: list[str], sizes: list[int]):
        self.names = names
        self.sizes = sizes
        self.numel = sum(sizes)
        self._segment_ids: dict[torch.device, Tensor] = {}

    def segment_ids(self, device: torch.device) -> Tensor:
        """(P,) index of the parameter tensor each flat entry belongs to, cached per device."""
        if device not in self._segment_ids:
            ids = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
            self._segment_ids[device] = ids.to(device)
        return self._segment_ids[device]

    def __len__(self) -> int:
        return len(self.sizes)


def cosine(a: Tensor, b: Tensor, eps: float = 1e-20) -> Tensor:
    """cos(a, b) as a 0-d tensor; 0 when either vector has zero norm (so a zero gradient never opens a gate)."""
    dot = torch.dot(a, b)
    nn = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return torch.where(nn > eps, dot / nn.clamp_min(eps), torch.zeros_like(dot))


def nonzero_pair(a: Tensor, b: Tensor, eps: float = 1e-20) -> Tensor:
    """0-d bool: both vectors have a non-zero norm (a gate never opens on a zero gradient, whatever tau)."""
    return torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b) > eps


def segment_cosines(g_e: Tensor, g_r: Tensor, layout: ParamLayout, eps: float = 1e-20,
                    return_valid: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """(L,) cosine per parameter tensor, 0 where either part has zero norm (and that mask, if asked)."""
    ids = layout.segment_ids(g_e.device)
    L = len(layout)
    dot = torch.zeros(L, device=g_e.device, dtype=g_e.dtype).index_add_(0, ids, g_e * g_r)
    ne = torch.zeros_like(dot).index_add_(0, ids, g_e * g_e).sqrt()
    nr = torch.zeros_like(dot).index_add_(0, ids, g_r * g_r).sqrt()
    nn = ne * nr
    cos = torch.where(nn > eps, dot / nn.clamp_min(eps), torch.zeros_like(dot))
    return (cos, nn > eps) if return_valid else cos


class Strategy(ABC):
    """Combine g_e and g_r into the enhancer's update. Subclasses implement `forward` only."""

    #: the name used in configs and on the command line
    name: str = ""

    def __call__(self, g_e: Tensor, g_r: Tensor, layout: ParamLayout | None = None,
                 cos: Tensor | None = None) -> Decision:
        """Check the pair once, then decide. `cos` may be given (e.g. a cosine reduced across workers)."""
        if g_e.dim() != 1 or g_e.shape != g_r.shape:
            raise ValueError(f"Parameters `g_e` and `g_r` should be 1-D tensors of the same shape. "
                             f"Found `g_e.shape = {tuple(g_e.shape)}` and `g_r.shape = {tuple(g_r.shape)}`.")
        if cos is None:
            cos = cosine(g_e, g_r)
        return self.forward(g_e, g_r, cos, layout)

    @abstractmethod
    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        """Return the update for a checked pair."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return self.name
