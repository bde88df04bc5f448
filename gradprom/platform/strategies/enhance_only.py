"""Enhancement alone: the task gradient never reaches the enhancer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy

if TYPE_CHECKING:
    from torch import Tensor


class EnhanceOnly(Strategy):
    """update = g_e (the recognizer still trains on E's output; it just never steers E)."""

    name = "enhance_only"
    label = "enhance only"
    help = "g_e alone (the image-quality reference)"
    output_space = True
    additive = True

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        return Decision(update=g_e.clone(), cos=cos, gate_open=cos.new_zeros(cos.shape),
                        task_part=g_e.new_zeros(g_e.shape))
