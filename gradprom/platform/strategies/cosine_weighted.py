"""Du et al. 2018, "Adapting auxiliary losses using gradient similarity": weight g_r by max(0, cos)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy, segment_cosines

if TYPE_CHECKING:
    from torch import Tensor


class CosineWeighted(Strategy):
    """update = g_e + max(0, cos(g_e, g_r)) * g_r, globally or per parameter tensor.

    `gate_open` logs whether any of g_r was admitted (cos > 0).
    """

    name = "cosine_weighted"
    label = "cosine-weighted"
    help = "Du et al. 2018: add max(0, cos) * g_r"
    supports_layer = True
    output_space = True
    gating = True
    additive = True

    def __init__(self, granularity: Literal["global", "layer"] = "global"):
        if granularity not in ("global", "layer"):
            raise ValueError(f"Parameter `granularity` should be 'global' or 'layer'. Found {granularity!r}.")
        self.granularity = granularity

    @classmethod
    def from_config(cls, tau: float, granularity: str) -> CosineWeighted:
        return cls(granularity=granularity)  # type: ignore[arg-type]

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        if self.granularity == "global":
            w = cos.clamp_min(0.0)
            part = w * g_r
            return Decision(update=g_e + part, cos=cos, gate_open=(w > 0).to(g_e.dtype), task_part=part)
        if layout is None:
            raise ValueError("`granularity='layer'` needs the parameter layout of the enhancer.")
        w = segment_cosines(g_e, g_r, layout).clamp_min(0.0)
        layer_open = (w > 0).to(g_e.dtype)
        part = w[layout.segment_ids(g_e.device)] * g_r
        return Decision(update=g_e + part, cos=cos, gate_open=layer_open.mean(), layer_open=layer_open,
                        task_part=part)

    def __repr__(self) -> str:
        return f"CosineWeighted(granularity={self.granularity!r})"

    def __str__(self) -> str:
        return self.label + ("" if self.granularity == "global" else " (layer)")
