"""Any torchjd aggregator (PCGrad, UPGrad, MGDA, GradVac, ...) applied to the stacked pair [g_e, g_r]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy

if TYPE_CHECKING:
    from torch import Tensor


class TorchJD(Strategy):
    """update = aggregator([[g_e], [g_r]]): the multi-task baselines, computed by torchjd itself.

    These are not gates, so `gate_open` is logged as NaN.

    :param aggregator_name: a class name from `torchjd.aggregation` (e.g. "PCGrad", "UPGrad").
    :param label: the config key this instance was built from (default `torchjd:NAME`); kept under this
        keyword for older callers, it sets `.name`, while `str()` is torchjd's own short label.
    :param kwargs: keyword arguments of that class (e.g. `c=0.5` for CAGrad).
    """

    help = "any torchjd aggregator over [g_e, g_r], e.g. torchjd:UPGrad, torchjd:CAGrad:c=0.5"

    def __init__(self, aggregator_name: str, label: str | None = None, **kwargs: Any):
        import torchjd.aggregation as agg  # imported here so the gate strategies do not need torchjd loaded

        cls = getattr(agg, aggregator_name, None)
        if not (isinstance(cls, type) and issubclass(cls, agg.Aggregator)) or cls is agg.Aggregator:
            names = sorted(n for n in agg.__all__
                           if isinstance(getattr(agg, n), type) and issubclass(getattr(agg, n), agg.Aggregator)
                           and n not in ("Aggregator", "WeightedAggregator", "GramianWeightedAggregator"))
            raise ValueError(f"`{aggregator_name}` is not a torchjd aggregator; choose one of {names}.")
        try:
            self.aggregator = cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"torchjd's {aggregator_name} could not be built with {kwargs}: {e}") from None
        except ImportError as e:  # e.g. CAGrad and NashMTL need optional solvers (torchjd extras)
            raise ValueError(f"torchjd's {aggregator_name} needs an optional dependency: {e}") from None
        self.aggregator_name = aggregator_name
        self.kwargs = kwargs
        self.name = label or f"torchjd:{aggregator_name}"

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        import torch

        update = self.aggregator(torch.stack([g_e, g_r]))
        return Decision(update=update, cos=cos, gate_open=cos.new_full(cos.shape, float("nan")))

    def __repr__(self) -> str:
        return f"TorchJD({self.aggregator!r})"

    def __str__(self) -> str:
        return str(self.aggregator)


class PCGrad(TorchJD):
    """torchjd's PCGrad under its own config name (`pcgrad`), the grid's projection baseline."""

    name = "pcgrad"
    label = "PCGrad"
    help = "Yu et al. 2020: project conflicting gradients (torchjd)"

    def __init__(self) -> None:
        super().__init__("PCGrad", label="pcgrad")

    def __repr__(self) -> str:
        return "PCGrad()"
