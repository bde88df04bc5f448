"""Joint (ESTR-style task-driven) training: always add the task gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy

if TYPE_CHECKING:
    from torch import Tensor


class Joint(Strategy):
    """update = g_e + g_r (the task-driven baseline whose image quality GradProm protects)."""

    name = "joint"
    label = "joint"
    help = "g_e + g_r always (task-driven training)"
    output_space = True
    additive = True

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        return Decision(update=g_e + g_r, cos=cos, gate_open=cos.new_ones(cos.shape), task_part=g_r)
