"""The second gating level (`gate_level: server`): the server gates the federation's aggregated update.

Rule. Each site trains E on its enhancement gradient alone (enhance_only) and returns, besides its weights,
the sums of its enhancer gradients over its local steps, A_e = Σ_t g_e,t and A_r = Σ_t g_r,t. The server takes
their sample-weighted means Ā_e, Ā_r (weighted by `num-examples`, as FedAvg weights the models) and
applies the engine's own GradProm strategy to the pair:

    d = Ā_e + [cos(Ā_e, Ā_r) > τ] · Ā_r          (per parameter tensor with `granularity: layer`)

so the task signal is admitted only where it agrees with the federation's enhancement direction. The global
enhancer is the Flower strategy's aggregate of the sites' (enhancement-only) enhancers plus the admitted task
part, rescaled into weight space by how far the enhancement part actually moved them:

    θ_E ← θ̄_E − s · (d − Ā_e),    s = ‖θ_E,start − θ̄_E‖ / ‖Ā_e‖

With one site, Ā_e = A_e and Ā_r = A_r, so the decision and d are exactly the local GradProm rule applied to
that site's accumulated update. For τ ≥ 0 the engine's guarantee carries over: ⟨d, Ā_e⟩ ≥ ‖Ā_e‖².
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord

from gradprom.platform.build import Models
from gradprom.platform.config import Config
from gradprom.platform.strategies import Decision, GradProm, ParamLayout

from .strategy import from_record, to_record
from .task import enhancer_flat, enhancer_layout

log = logging.getLogger(__name__)


@dataclass
class ServerGate:
    """The aggregated pair and the gate's decision for one round."""

    decision: Decision
    mean_ge: torch.Tensor
    mean_gr: torch.Tensor

    @property
    def task_part(self) -> torch.Tensor:
        """d − Ā_e: the admitted share of the task direction (zero when the gate is closed)."""
        return self.decision.update - self.mean_ge


def weighted_pair(pairs: list[tuple[np.ndarray, np.ndarray]],
                  weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample-weighted means of the sites' (A_e, A_r)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    ge = sum(wi * np.asarray(a, dtype=np.float64) for wi, (a, _) in zip(w, pairs))
    gr = sum(wi * np.asarray(b, dtype=np.float64) for wi, (_, b) in zip(w, pairs))
    return torch.as_tensor(ge, dtype=torch.float32), torch.as_tensor(gr, dtype=torch.float32)


def gate_aggregate(mean_ge: torch.Tensor, mean_gr: torch.Tensor, tau: float, granularity: str = "global",
                   layout: ParamLayout | None = None) -> ServerGate:
    """Apply the engine's GradProm gate to the federation's aggregated pair."""
    return ServerGate(GradProm(tau=tau, granularity=granularity)(mean_ge, mean_gr, layout), mean_ge, mean_gr)


def apply_to_weights(start: torch.Tensor, averaged: torch.Tensor, gate: ServerGate) -> torch.Tensor:
    """θ̄_E − s · (d − Ā_e), with s the weight-space length of the enhancement update per unit of Ā_e."""
    ne = torch.linalg.vector_norm(gate.mean_ge)
    s = torch.linalg.vector_norm(start - averaged) / ne if ne > 0 else torch.zeros(())
    return averaged - s * gate.task_part


def make_server_gate(cfg: Config, models: Models,
                     gate_log: dict[int, tuple[float, float]]) -> Callable[..., ArrayRecord]:
    """The strategy's `server_gate` hook: (round, start, aggregate, [(A_e, A_r)], weights) -> the gated global
    model; it records (gate open, cos) per round in `gate_log`. It sees only the aggregate and the pairs the
    strategy hands it."""
    layout = enhancer_layout(models)

    def hook(rnd: int, start: ArrayRecord, agg: ArrayRecord, pairs, weights) -> ArrayRecord:
        mean_ge, mean_gr = weighted_pair(pairs, weights)
        gate = gate_aggregate(mean_ge, mean_gr, cfg.gradprom.tau, cfg.gradprom.granularity, layout)
        arrays = from_record(agg)
        new = apply_to_weights(enhancer_flat(from_record(start), models), enhancer_flat(arrays, models), gate)
        for name, piece in zip(layout.names, torch.split(new, layout.sizes)):
            key = f"enhancer.{name}"
            ref = np.asarray(arrays[key])
            arrays[key] = piece.reshape(ref.shape).numpy().astype(ref.dtype)
        gate_log[rnd] = (float(gate.decision.gate_open), float(gate.decision.cos))
        log.info("round %d: server gate %s (cos %+.3f, tau %g)", rnd, "open" if gate_log[rnd][0] > 0 else "closed",
                 gate_log[rnd][1], cfg.gradprom.tau)
        return to_record(arrays)

    return hook
