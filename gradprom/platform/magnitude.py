"""Magnitude control of the task gradient (`gradprom.scale`): g_r's norm set against g_e's before the gate's sum.

"match": g_r ← f·g_r with f = α·‖g_e‖/‖g_r‖; "clip": f = min(1, α·‖g_e‖/‖g_r‖). The norms are taken over all of
E's parameters ("global") or per parameter tensor ("layer"), optionally smoothed by an EMA with MetaBalance's
β (Chen et al. 2022) and softened by its relax factor r: f ← r·f + (1 − r). Every factor is ≥ 0, so for an
open gate ⟨g_e + f·g_r, g_e⟩ ≥ ‖g_e‖² still holds wherever the gate compared cos > τ ≥ 0 on the same block of
parameters (a per-layer factor therefore needs a per-layer gate; the config enforces that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from gradprom.platform.strategies import ParamLayout


@dataclass
class TaskScaler:
    """Rescale g_r each step; keeps the EMA of the norms between steps (one instance per training step)."""

    mode: Literal["match", "clip"]
    factor: float = 1.0
    granularity: Literal["global", "layer"] = "global"
    ema: float = 0.0
    relax: float = 1.0
    _norms: Tensor | None = field(default=None, repr=False)

    def state_dict(self) -> dict[str, Tensor]:
        """The EMA of the norms (empty before the first step): checkpointed, so a resumed run scales as the
        uninterrupted one would."""
        return {} if self._norms is None else {"norms": self._norms.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self._norms = state["norms"].clone() if "norms" in state else None

    def __call__(self, g_e: Tensor, g_r: Tensor, layout: ParamLayout) -> tuple[Tensor, Tensor]:
        """(scaled g_r, the factor applied as one number: ‖scaled g_r‖/‖g_r‖, 1 for a zero g_r)."""
        if self.granularity == "global":
            norms = torch.stack([torch.linalg.vector_norm(g_e), torch.linalg.vector_norm(g_r)])
        else:
            ids = layout.segment_ids(g_e.device)
            sq = torch.zeros(2, len(layout), device=g_e.device, dtype=g_e.dtype)
            sq[0].index_add_(0, ids, g_e * g_e)
            sq[1].index_add_(0, ids, g_r * g_r)
            norms = sq.sqrt()
        if self.ema > 0 and self._norms is not None:
            norms = self.ema * self._norms + (1 - self.ema) * norms
        self._norms = norms.detach()
        n_e, n_r = norms[0], norms[1]
        f = torch.where(n_r > 0, self.factor * n_e / n_r.clamp_min(1e-30), torch.ones_like(n_r))
        if self.mode == "clip":
            f = f.clamp_max(1.0)
        f = self.relax * f + (1 - self.relax)
        if self.granularity == "global":
            return f * g_r, f
        scaled = f[layout.segment_ids(g_e.device)] * g_r
        n_raw = torch.linalg.vector_norm(g_r)
        applied = torch.where(n_raw > 0, torch.linalg.vector_norm(scaled) / n_raw.clamp_min(1e-30),
                              torch.ones_like(n_raw))
        return scaled, applied
