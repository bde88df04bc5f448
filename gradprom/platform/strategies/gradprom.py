"""GradProm (Zhang & Cheng, TPAMI 2025, arXiv 2501.01114): admit g_r only where it agrees with g_e."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy, nonzero_pair, segment_cosines

if TYPE_CHECKING:
    from torch import Tensor


class GradProm(Strategy):
    """update = g_e + [cos(g_e, g_r) > tau] * g_r, globally or per parameter tensor.

    A zero-norm g_e or g_r (globally, or in a layer) keeps the gate closed whatever tau is.
    For tau >= 0 the update d satisfies <d, g_e> >= |g_e|^2: it is always a descent direction for the
    enhancement loss, so the task can help the enhancer but never pull it uphill. tau < 0 loses that.

    :param tau: gate threshold in [-1, 1].
    :param granularity: "global" (one cosine over all parameters) or "layer" (one per parameter tensor).
    """

    name = "gradprom"
    label = "GradProm"
    help = "the paper's gate: add g_r when cos(g_e, g_r) > tau"
    supports_layer = True
    output_space = True
    gating = True
    additive = True

    def __init__(self, tau: float = 0.0, granularity: Literal["global", "layer"] = "global"):
        if not -1.0 <= tau <= 1.0:
            raise ValueError(f"Parameter `tau` should be in [-1, 1]. Found `tau = {tau}`.")
        if granularity not in ("global", "layer"):
            raise ValueError(f"Parameter `granularity` should be 'global' or 'layer'. Found {granularity!r}.")
        self.tau = float(tau)
        self.granularity = granularity

    @classmethod
    def from_config(cls, tau: float, granularity: str) -> GradProm:
        return cls(tau=tau, granularity=granularity)  # type: ignore[arg-type]

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        if self.granularity == "global":
            open_ = ((cos > self.tau) & nonzero_pair(g_e, g_r)).to(g_e.dtype)
            part = open_ * g_r
            return Decision(update=g_e + part, cos=cos, gate_open=open_, task_part=part)
        if layout is None:
            raise ValueError("`granularity='layer'` needs the parameter layout of the enhancer.")
        layer_cos, valid = segment_cosines(g_e, g_r, layout, return_valid=True)
        layer_open = ((layer_cos > self.tau) & valid).to(g_e.dtype)
        part = layer_open[layout.segment_ids(g_e.device)] * g_r
        return Decision(update=g_e + part, cos=cos, gate_open=layer_open.mean(), layer_open=layer_open,
                        task_part=part)

    def __repr__(self) -> str:
        return f"GradProm(tau={self.tau}, granularity={self.granularity!r})"

    def __str__(self) -> str:
        suffix = "" if self.granularity == "global" else ", layer"
        return f"GradProm (τ={self.tau:g}{suffix})"
