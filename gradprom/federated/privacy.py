"""Differential privacy of the federation's aggregate (`federated.dp`), with Flower's own wrappers and mods.

  client-fixed   DifferentialPrivacyClientSideFixedClipping + the sites' `fixedclipping_mod`: each site clips its
                 weight update (new - global, every array) to `dp_clipping_norm` before it leaves; the server adds
                 Gaussian noise of std `dp_noise_multiplier * dp_clipping_norm / sampled sites` to the mean
  server-fixed   DifferentialPrivacyServerSideFixedClipping: the server clips each update, then adds that noise
  adaptive       DifferentialPrivacyServerSideAdaptiveClipping: server-side clipping whose norm follows the median
                 update norm (Andrew et al. 2021), starting at `dp_clipping_norm`

The wrapper is the strategy's class (RecordingMixin in front of it) around the shipped aggregation strategy, so
the rounds table still sees every reply, failed and non-finite ones are removed before the wrapper clips, and
the server gate (`gate_level: server`) decides on a clipped, noised pair (`private_pair`). Under DP every site
weighs equally in the mean (`DP_WEIGHT`): the noise's sensitivity assumes a plain mean of clipped updates.

(epsilon, delta): Flower's RDP accountant (flwr.supercore.privacy_accounting, on Google's dp-accounting) for fixed
clipping with fedavg/fedprox, no sampling amplification (every sampled site, every round); adaptive clipping and
fedadam/fedyogi get no accountant from Flower, so only the noise multiplier and clipping norm are reported.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, clip_inputs_inplace, compute_stdv

log = logging.getLogger(__name__)
WRAPPERS = {"client-fixed": DifferentialPrivacyClientSideFixedClipping,
            "server-fixed": DifferentialPrivacyServerSideFixedClipping,
            "adaptive": DifferentialPrivacyServerSideAdaptiveClipping}
# the metric every site sends under DP and the strategy weighs by: 1 each, a plain mean
DP_WEIGHT = "dp-weight"
ACCOUNTED = ("client-fixed", "server-fixed")


def as_float(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Integer buffers (BatchNorm's num_batches_tracked) as float32, so that Flower can clip and noise them;
    the receiving model casts them back to its own dtype."""
    return {k: a if a.dtype.kind == "f" else a.astype(np.float32) for k, a in arrays.items()}


def after_release(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Post-processing of the noised aggregate (it costs no privacy): BatchNorm running variances, which the
    noise can push below zero, are floored at zero (the layer adds its eps)."""
    return {k: np.maximum(a, 0).astype(a.dtype) if k.endswith("running_var") else a for k, a in arrays.items()}


def make_accountant(dp: str, fl_strategy: str, noise_multiplier: float, hospitals: int, delta: float):
    """Flower's RDP accountant where Flower supports it (fixed clipping, FedAvg's aggregation, noise > 0)."""
    if dp not in ACCOUNTED or fl_strategy not in ("fedavg", "fedprox") or noise_multiplier <= 0:
        return None
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    return RdpAccountant(PrivacyConfig(target_delta=delta, population_size=hospitals,
                                       neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=SamplingMethod.NO_AMPLIFICATION))


def wrap(dp: str, inner: Strategy, cls_with_mixin: type, *, clipping_norm: float, noise_multiplier: float,
         num_sampled: int, accountant=None):
    """The DP wrapper `dp` around `inner`, as `cls_with_mixin` (RecordingMixin + the wrapper class)."""
    if dp == "adaptive":
        return cls_with_mixin(inner, noise_multiplier=noise_multiplier, num_sampled_clients=num_sampled,
                              initial_clipping_norm=clipping_norm)
    return cls_with_mixin(inner, noise_multiplier, clipping_norm, num_sampled, accountant=accountant)


def private_pair(pairs: list[tuple[np.ndarray, np.ndarray]], clipping_norm: float, noise_multiplier: float,
                 num_sampled: int) -> tuple[np.ndarray, np.ndarray]:
    """The server gate's (mean A_e, mean A_r) under DP: each site's pair clipped jointly to `clipping_norm`
    (Flower's clip_inputs_inplace), the plain mean, then Flower's Gaussian noise of the same std as the weights'."""
    clipped = []
    for a_e, a_r in pairs:
        both = [np.array(a_e, dtype=np.float64), np.array(a_r, dtype=np.float64)]
        clip_inputs_inplace(both, clipping_norm)
        clipped.append(both)
    mean = [sum(c[i] for c in clipped) / len(clipped) for i in (0, 1)]
    add_gaussian_noise_inplace(mean, compute_stdv(noise_multiplier, clipping_norm, num_sampled))
    return mean[0], mean[1]


def privacy_header(fed: Any) -> dict[str, Any]:
    """The privacy parameters as run.json records them."""
    if fed.dp == "none":
        return {"dp": "none"}
    return {"dp": fed.dp, "dp_clipping_norm": fed.dp_clipping_norm, "dp_noise_multiplier": fed.dp_noise_multiplier,
            "dp_delta": fed.dp_delta, "dp_weighting": "uniform"}


def privacy_spent(strategy: Any) -> dict[str, Any]:
    """What the run spent: epsilon at delta when Flower's accountant ran, else a note why there is none."""
    accountant = getattr(strategy, "accountant", None)
    out: dict[str, Any] = {}
    if hasattr(strategy, "clipping_norm"):
        out["dp_final_clipping_norm"] = float(strategy.clipping_norm)
    if accountant is None:
        out["dp_epsilon"] = None
        out["dp_accountant"] = ("none: Flower's accountant covers fixed clipping with FedAvg aggregation and a "
                                "positive noise multiplier only")
        return out
    spent = accountant.get_privacy_spent()
    out.update(dp_epsilon=float(spent.epsilon), dp_delta=float(spent.delta), dp_releases=int(spent.num_releases),
               dp_accountant=f"flwr {spent.accounting_method} (dp-accounting), no sampling amplification, "
                             "add-or-remove-one site")
    return out
