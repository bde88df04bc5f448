"""Enhancement alone: the task gradient never reaches the enhancer."""

from __future__ import annotations

import torch
from torch import Tensor

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy


class EnhanceOnly(Strategy):
    """update = g_e (the recognizer still trains on E's output; it just never steers E)."""

    name = "enhance_only"

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        return Decision(update=g_e.clone(), cos=cos, gate_open=torch.zeros_like(cos))
