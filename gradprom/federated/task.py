"""The ML of one hospital, in plain PyTorch on the engine (no flwr here): models, weights as arrays, local
GradProm steps with the engine's TrainStep, and evaluation.

Weights travel as one flat dict of numpy arrays, `enhancer.<name>` and `recognizer.<name>` (state dicts,
buffers included). With `gate_level: server` the site trains E on its enhancement gradient alone and also
returns the sums of g_e and g_r over its local steps (`gate.sum_ge`, `gate.sum_gr`) for the server's gate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradprom.platform.build import Models, build_models, to_device, train_loader
from gradprom.platform.config import Config
from gradprom.platform.data.dataset import DataInfo, EnhancementDataset
from gradprom.platform.data.degradations import parse_degradation
from gradprom.platform.epoch import Batch, EpochRunner
from gradprom.platform.evaluate import evaluate_split
from gradprom.platform.step import TrainStep
from gradprom.platform.strategies import Decision, ParamLayout, Strategy

from .config import FedConfig
from .partition import Site

GATE_KEYS = ("gate.sum_ge", "gate.sum_gr")


# -------------------------------------------------------------------------------------------------------
# config of one site
def site_config(cfg: Config, fed: FedConfig, k: int) -> Config:
    """The run config as site k sees it: its tau/strategy overrides, and enhance_only under server gating."""
    g = cfg.gradprom
    over = fed.sites.get(k)
    upd: dict[str, Any] = {}
    if over is not None and over.tau is not None:
        upd["tau"] = over.tau
    if over is not None and over.strategy is not None:
        upd["strategy"] = over.strategy
    if fed.gate_level == "server":  # the site never adds g_r itself; the server's gate decides
        upd["strategy"] = "enhance_only"
    return cfg.model_copy(update={"gradprom": g.model_copy(update=upd)}) if upd else cfg


def site_seed(cfg: Config, k: int) -> int:
    """Seed of site k's noise draws and data order (distinct per site, fixed per run)."""
    return cfg.seed * 1000 + 17 * (k + 1)


# -------------------------------------------------------------------------------------------------------
# weights <-> arrays
def get_arrays(models: Models) -> dict[str, np.ndarray]:
    """E's and R's state dicts as one flat dict of numpy arrays."""
    out = {}
    for prefix, m in (("enhancer", models.enhancer), ("recognizer", models.recognizer)):
        for k, v in m.state_dict().items():
            out[f"{prefix}.{k}"] = v.detach().cpu().numpy().copy()
    return out


def set_arrays(models: Models, arrays: dict[str, np.ndarray]) -> None:
    """Load a flat array dict into E and R (averaged integer buffers are cast back to their dtype)."""
    for prefix, m in (("enhancer", models.enhancer), ("recognizer", models.recognizer)):
        own = m.state_dict()
        sd = {}
        for k, ref in own.items():
            a = arrays[f"{prefix}.{k}"]
            sd[k] = torch.as_tensor(np.asarray(a)).reshape(ref.shape).to(ref.dtype)
        m.load_state_dict(sd)


def enhancer_flat(arrays: dict[str, np.ndarray], models: Models) -> Tensor:
    """E's trainable parameters out of an array dict, flattened in the step's order."""
    names = [n for n, p in models.enhancer.named_parameters() if p.requires_grad]
    return torch.cat([torch.as_tensor(np.asarray(arrays[f"enhancer.{n}"]), dtype=torch.float32).reshape(-1)
                      for n in names])


def enhancer_layout(models: Models) -> ParamLayout:
    """Where each enhancer parameter sits in the flat vector (as TrainStep lays it out)."""
    named = [(n, p) for n, p in models.enhancer.named_parameters() if p.requires_grad]
    return ParamLayout([n for n, _ in named], [p.numel() for _, p in named])


def all_finite(arrays: dict[str, np.ndarray]) -> bool:
    """Every float array is free of NaN/Inf."""
    return all(np.isfinite(a).all() for a in arrays.values() if np.issubdtype(np.asarray(a).dtype, np.floating))


# -------------------------------------------------------------------------------------------------------
# local training
class SummingStrategy(Strategy):
    """Wraps the site's strategy and sums the (g_e, g_r) pairs it sees (for the server's gate)."""

    def __init__(self, inner: Strategy):
        self.inner, self.name = inner, inner.name
        self.sum_ge: Tensor | None = None
        self.sum_gr: Tensor | None = None

    def forward(self, g_e: Tensor, g_r: Tensor, cos: Tensor, layout: ParamLayout | None) -> Decision:
        self.sum_ge = g_e.detach().clone() if self.sum_ge is None else self.sum_ge + g_e.detach()
        self.sum_gr = g_r.detach().clone() if self.sum_gr is None else self.sum_gr + g_r.detach()
        return self.inner.forward(g_e, g_r, cos, layout)


class ProximalOptimizer:
    """FedProx's local step: adds mu * (w - w_global) to each gradient before the wrapped optimizer steps.

    The gate sees the site's own g_e and g_r; the proximal pull is part of the update, as in FedProx.
    """

    def __init__(self, opt: torch.optim.Optimizer, mu: float):
        self.opt, self.mu = opt, mu
        self.anchors = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]

    def step(self) -> None:
        with torch.no_grad():
            for g, anchors in zip(self.opt.param_groups, self.anchors):
                for p, a in zip(g["params"], anchors):
                    if p.grad is not None:
                        p.grad.add_(p - a, alpha=self.mu)
        self.opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str):
        """Forward the rest (e.g. TwoPartAdam's set_task_part / preconditioner) to the wrapped optimizer."""
        opt = self.__dict__.get("opt")
        if opt is None:
            raise AttributeError(name)
        return getattr(opt, name)


@dataclass
class LocalResult:
    """What one site's round produced."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    sum_ge: np.ndarray | None = None
    sum_gr: np.ndarray | None = None


def site_datasets(cfg: Config, site: Site, k: int) -> tuple[EnhancementDataset, EnhancementDataset]:
    """The site's train and val datasets, degraded by its own scanner."""
    deg = parse_degradation(site.degradation)
    seed = site_seed(cfg, k)
    return (EnhancementDataset(site.train, deg, cfg.task, seed, "train"),
            EnhancementDataset(site.val, deg, cfg.task, seed, "val"))


def new_models(cfg: Config, info: DataInfo, site: Site | None = None) -> Models:
    """Fresh E and R (seeded by the run's seed, so every process builds the same initial model)."""
    return build_models(cfg, info, parse_degradation(site.degradation if site else cfg.data.degradation).scale,
                        torch.device("cpu"))


def local_batches(train_ds: EnhancementDataset, cfg: Config, first_epoch: int) -> Iterator[Batch]:
    """The site's batches, epoch after epoch of its own split (the round's steps need not end with an epoch)."""
    epoch = first_epoch
    while True:
        for batch in train_loader(train_ds, cfg, epoch):
            yield to_device(batch, torch.device("cpu"))
        epoch += 1


def train_site(cfg: Config, fed: FedConfig, info: DataInfo, site: Site, arrays: dict[str, np.ndarray],
               server_round: int, proximal_mu: float = 0.0) -> LocalResult:
    """Start from the global weights, run `fed.local_steps` engine steps on the site's data (the engine's
    epoch runner, without a run directory: nothing but the reply leaves the site), evaluate on its val split;
    returns the new weights and the metrics that leave the site."""
    k = site.index
    scfg = site_config(cfg, fed, k)
    scfg = scfg.model_copy(update={"seed": site_seed(cfg, k)})
    train_ds, val_ds = site_datasets(cfg, site, k)
    models = new_models(cfg, info, site)
    set_arrays(models, arrays)
    torch.manual_seed(site_seed(cfg, k) + server_round)
    opt_e, opt_r = models.opt_e, models.opt_r
    if proximal_mu > 0:
        opt_e = ProximalOptimizer(opt_e, proximal_mu)
        opt_r = ProximalOptimizer(opt_r, proximal_mu) if opt_r is not None else None
    summing: list[SummingStrategy] = []
    step = TrainStep.from_config(scfg, models.enhancer, models.recognizer, opt_e, opt_r,
                                 strategy=lambda inner: summing.append(SummingStrategy(inner)) or summing[0])
    runner = EpochRunner(scfg, models, step, info, torch.device("cpu"), progress=False)
    t0 = time.monotonic()
    first_epoch = (server_round - 1) * 1000  # a fresh data order and noise draw every round, fixed per (seed, round)
    stats = runner.train_epoch(server_round, local_batches(train_ds, scfg, first_epoch), fed.local_steps)
    gate = stats.gate()
    val, _ = evaluate_split(models, val_ds, cfg, info, torch.device("cpu"))
    metrics = {"num-examples": len(site.train), "loss_e": stats.mean("loss_e"),
               "loss_r": stats.mean("loss_r"),
               "gate_open_rate": gate["gate_open_rate"], "mean_cos": gate["mean_cos"],
               "norm_ge": stats.mean("norm_ge"), "norm_gr": stats.mean("norm_gr"),
               "skipped_steps": gate["skipped_steps"], "train_seconds": time.monotonic() - t0,
               **{f"val_{m}": v for m, v in val.items()}}
    out = LocalResult(get_arrays(models), {k_: float(v) for k_, v in metrics.items()})
    if summing[0].sum_ge is not None:
        out.sum_ge, out.sum_gr = summing[0].sum_ge.numpy(), summing[0].sum_gr.numpy()
    return out


def evaluate_arrays(cfg: Config, info: DataInfo, arrays: dict[str, np.ndarray], ds) -> dict[str, float]:
    """Metrics of the given weights on a dataset (the server's held-out split, or a site's val split)."""
    models = new_models(cfg, info)
    set_arrays(models, arrays)
    metrics, _ = evaluate_split(models, ds, cfg, info, torch.device("cpu"))
    return {k: (math.nan if v is None else float(v)) for k, v in metrics.items()}
