"""Du et al. 2018, "Adapting auxiliary losses using gradient similarity": weight g_r by max(0, cos)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy, segment_cosines


class CosineWeighted(Strategy):
    """update = g_e + max(0, cos(g_e, g_r)) * g_r, globally or per parameter tensor.

    `gate_open` logs whether any of g_r was admitted (cos > 0).
    """

    name = "cosine_weighted"

    def __init__(self, granularity: Literal["global", "layer"] = "global"):
        if granularity not in ("global", "layer"):
            raise ValueError(f"Parameter `granularity` should be 'global' or 'layer'. Found {granularity!r}.")
        self.granularity = granularity

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        if self.granularity == "global":
            w = cos.clamp_min(0.0)
            return Decision(update=g_e + w * g_r, cos=cos, gate_open=(w > 0).to(g_e.dtype))
        if layout is None:
            raise ValueError("`granularity='layer'` needs the parameter layout of the enhancer.")
        w = segment_cosines(g_e, g_r, layout).clamp_min(0.0)
        layer_open = (w > 0).to(g_e.dtype)
        update = g_e + w[layout.segment_ids(g_e.device)] * g_r
        return Decision(update=update, cos=cos, gate_open=layer_open.mean(), layer_open=layer_open)

    def __repr__(self) -> str:
        return f"CosineWeighted(granularity={self.granularity!r})"
