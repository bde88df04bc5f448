"""Joint (ESTR-style task-driven) training: always add the task gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy


class Joint(Strategy):
    """update = g_e + g_r (the task-driven baseline whose image quality GradProm protects)."""

    name = "joint"

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        return Decision(update=g_e + g_r, cos=cos, gate_open=torch.ones_like(cos))
