"""The strategy interface: (g_e, g_r) -> the enhancer's update, plus what the gate saw.

A strategy gets the enhancer's flat enhancement gradient g_e and task gradient g_r (already reduced across
workers) and returns the update direction. Decisions stay tensors (no `.item()`), so a step on a GPU does not
synchronise inside the gate; the training step reads them once, for logging.

A strategy's capabilities are class attributes (`name`, `help`, `supports_layer`, `output_space`, `gating`,
`additive`); the registry in `__init__.py` reads them, so adding a strategy is its module plus one registry
entry. torch is imported inside the functions, so the registry (and the CLI's help built from it) loads
without torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class Decision:
    """What a strategy decided for one step."""

    update: Tensor  # (P,) the enhancer's update direction
    cos: Tensor  # () global cos(g_e, g_r); 0 when either norm is 0
    gate_open: Tensor  # () 1/0 for a gate, share of layers open in layer mode, NaN for non-gating aggregators
    layer_open: Tensor | None = None  # (L,) 1/0 per parameter tensor in layer mode
    # additive strategies: the admitted share of g_r, so update = g_e + task_part (None for torchjd aggregators);
    # the Adam variants of the step (separate moments, preconditioned gate) need this split
    task_part: Tensor | None = None


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
            import torch

            ids = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
            self._segment_ids[device] = ids.to(device)
        return self._segment_ids[device]

    def __len__(self) -> int:
        return len(self.sizes)


def cosine(a: Tensor, b: Tensor, eps: float = 1e-20) -> Tensor:
    """cos(a, b) as a 0-d tensor; 0 when either vector has zero norm (so a zero gradient never opens a gate)."""
    import torch

    dot = torch.dot(a, b)
    nn = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return torch.where(nn > eps, dot / nn.clamp_min(eps), torch.zeros_like(dot))


def nonzero_pair(a: Tensor, b: Tensor, eps: float = 1e-20) -> Tensor:
    """0-d bool: both vectors have a non-zero norm (a gate never opens on a zero gradient, whatever tau)."""
    import torch

    return torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b) > eps


def segment_cosines(g_e: Tensor, g_r: Tensor, layout: ParamLayout, eps: float = 1e-20,
                    return_valid: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """(L,) cosine per parameter tensor, 0 where either part has zero norm (and that mask, if asked)."""
    import torch

    ids = layout.segment_ids(g_e.device)
    L = len(layout)
    dot = torch.zeros(L, device=g_e.device, dtype=g_e.dtype).index_add_(0, ids, g_e * g_r)
    ne = torch.zeros_like(dot).index_add_(0, ids, g_e * g_e).sqrt()
    nr = torch.zeros_like(dot).index_add_(0, ids, g_r * g_r).sqrt()
    nn = ne * nr
    cos = torch.where(nn > eps, dot / nn.clamp_min(eps), torch.zeros_like(dot))
    return (cos, nn > eps) if return_valid else cos


class Strategy(ABC):
    """Combine g_e and g_r into the enhancer's update. Subclasses implement `forward` only.

    `str()` is the legend label (figures, reports); `.name` is the config key (`gradprom.strategy`).
    """

    #: the name used in configs and on the command line
    name: str = ""
    #: the legend label (what `str()` gives unless a subclass adds its parameters)
    label: str = ""
    #: one line for `gradprom train --help` and the docs
    help: str = ""
    #: accepts `granularity: layer` (one decision per parameter tensor)
    supports_layer: bool = False
    #: depends on (g_e, g_r) only through their cosine, so it also works on upstream gradients (`gate_space: output`)
    output_space: bool = False
    #: decides per step whether (or how much of) g_r is admitted; `gate_open` is then a rate
    gating: bool = False
    #: update = g_e + Decision.task_part; the magnitude and Adam variants (`gradprom.scale`, `moments`,
    #: `gate_metric`) apply only to these
    additive: bool = False

    @classmethod
    def from_config(cls, tau: float, granularity: str) -> Strategy:
        """Build from the config's `gradprom.tau` and `gradprom.granularity` (each class takes what it uses)."""
        return cls()

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
        return self.label or self.name
