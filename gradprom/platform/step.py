"""The GradProm training step: one function for the local loop, Ray Train workers, Tune trials and Flower
clients. Only the reducer differs between them (identity locally, a fused all-reduce under data parallelism).

Phases of one step (DESIGN.md §1):
  1) forward E once: x_hat = E(x_lq)
  2) losses at a detached copy z of x_hat -> upstream gradients u_e = dL_e/dz, u_r = dL_r/dz, and the
     recognizer's own gradient (one backward through R)
  3) back-propagate u_e and u_r through E's graph -> g_e, g_r (parameter space), or
     gate on cos(u_e, u_r) and run one VJP (output space, the cheap approximation)
  4) reduce everything in one flat buffer; skip the step if anything is NaN/Inf
  5) the strategy turns (g_e, g_r) into E's update; one optimizer step for E and one for R

The gate variants of issue 14 are options of this same step: `scaler` rescales g_r before the strategy's sum
(magnitude.py); `gate_metric="preconditioned"` runs the strategy in the metric of E's Adam (P = 1/(√v̂_e+ε)) by
handing it P^½·g_e and P^½·g_r; and an optimizer with `set_task_part` (optim.TwoPartAdam: separate moments or the
preconditioned step) receives g_e in `.grad` and the admitted share of g_r beside it instead of their sum.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from gradprom.platform.distributed.reducers import IdentityReducer, Reducer
from gradprom.platform.errors import TrainingError
from gradprom.platform.gradients import assign_flat_grad, enhancer_gradient_pair, enhancer_vjp, flatten_grads
from gradprom.platform.losses import enhancement_loss, recognition_loss
from gradprom.platform.magnitude import TaskScaler
from gradprom.platform.strategies import ParamLayout, Strategy, cosine, make_strategy

if TYPE_CHECKING:
    from gradprom.platform.config import Config

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What one step did, as plain floats (one row of steps/*.parquet)."""

    skipped: bool
    loss_e: float
    loss_r: float
    cos: float
    gate_open: float
    norm_ge: float
    norm_gr: float
    layer_open: list[float] | None = None
    nonfinite: str = ""  # which quantity was NaN/Inf when skipped
    scale: float = 1.0  # the factor applied to g_r (`gradprom.scale`; 1 without magnitude control)

    def row(self) -> dict:
        """The step-table columns (`scale` is new in issue 14: readers of older runs find it missing)."""
        r = {"loss_e": self.loss_e, "loss_r": self.loss_r, "cos": self.cos, "gate_open": self.gate_open,
             "norm_ge": self.norm_ge, "norm_gr": self.norm_gr, "skipped": self.skipped, "scale": self.scale}
        if self.layer_open is not None:
            r["layer_open"] = self.layer_open
        return r


@dataclass
class TrainStep:
    """Callable training step; `step(x_lq, x_hq, y)` updates E and R in place and returns a StepResult.

    :param reducer: averages the packed flat buffer across workers (identity in one process).
    :param lambda_e, lambda_r: weights of the enhancement and recognition losses in E's objective.
        The recognizer itself learns from the unweighted recognition loss (Adam is scale-free, and this
        keeps R learning even when lambda_r = 0).
    """

    enhancer: nn.Module
    recognizer: nn.Module
    opt_e: torch.optim.Optimizer
    opt_r: torch.optim.Optimizer | None
    strategy: Strategy
    task: Literal["classification", "segmentation"] = "classification"
    lambda_e: float = 1.0
    lambda_r: float = 0.1
    enhancement_loss: str = "l1"
    recognizer_mode: Literal["joint", "clean", "frozen"] = "joint"
    gate_space: Literal["parameter", "output"] = "parameter"
    vjp: Literal["sequential", "batched"] = "sequential"
    reducer: Reducer = field(default_factory=IdentityReducer)
    autocast_dtype: torch.dtype | None = None  # bf16 on CUDA
    max_nonfinite_streak: int = 10
    scaler: TaskScaler | None = None  # `gradprom.scale`: g_r's magnitude against g_e's before the sum
    gate_metric: Literal["euclidean", "preconditioned"] = "euclidean"  # the metric the gate decides in

    def __post_init__(self) -> None:
        self.e_params = [p for p in self.enhancer.parameters() if p.requires_grad]
        self.e_names = [n for n, p in self.enhancer.named_parameters() if p.requires_grad]
        self.layout = ParamLayout(self.e_names, [p.numel() for p in self.e_params])
        if self.recognizer_mode == "frozen":
            self.recognizer.requires_grad_(False)
            self.r_params: list[nn.Parameter] = []
        else:
            self.r_params = [p for p in self.recognizer.parameters() if p.requires_grad]
        self._enh_loss = enhancement_loss(self.enhancement_loss)
        self._rec_loss = recognition_loss(self.task)
        if self.gate_metric == "preconditioned" and not hasattr(self.opt_e, "preconditioner"):
            raise ValueError("`gate_metric='preconditioned'` needs E's optimizer to expose Adam's preconditioner "
                             "(optim.TwoPartAdam, built by optim.build_optimizer)")
        if hasattr(self.opt_e, "set_task_part") and [id(p) for p in self.opt_e.params] != [id(p) for p in
                                                                                             self.e_params]:
            raise ValueError("E's two-part optimizer must hold exactly the enhancer's trainable parameters, in order")
        self.steps_done = 0
        self.nonfinite_streak = 0
        self.nonfinite_total = 0

    @classmethod
    def from_config(cls, cfg: Config, enhancer: nn.Module, recognizer: nn.Module, opt_e: torch.optim.Optimizer,
                    opt_r: torch.optim.Optimizer | None,
                    reducer: Reducer | None = None, device: torch.device | None = None,
                    strategy: Callable[[Strategy], Strategy] | None = None) -> TrainStep:
        """Build the step from a Config (gradprom + optim sections).

        :param strategy: wraps the configured strategy (a Flower site's summing wrapper for the server gate).
        """
        g = cfg.gradprom
        on_cuda = device is not None and device.type == "cuda"
        scaler = None if g.scale == "none" else TaskScaler(g.scale, g.scale_factor, g.scale_granularity, g.scale_ema,
                                                            g.scale_relax)
        return cls(enhancer=enhancer, recognizer=recognizer, opt_e=opt_e, opt_r=opt_r,
                   strategy=(strategy or (lambda s: s))(make_strategy(g.strategy, g.tau, g.granularity)), task=cfg.task,
                   lambda_e=g.lambda_e, lambda_r=g.lambda_r, enhancement_loss=g.enhancement_loss,
                   recognizer_mode=g.recognizer_mode, gate_space=g.gate_space, vjp=g.vjp,
                   reducer=reducer or IdentityReducer(),
                   autocast_dtype=torch.bfloat16 if on_cuda and cfg.run.precision == "bf16" else None,
                   max_nonfinite_streak=cfg.optim.max_nonfinite_streak, scaler=scaler, gate_metric=g.gate_metric)

    # ------------------------------------------------------------------------------------------------
    def _autocast(self, device_type: str):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.autocast_dtype)

    def upstream(self, x_hat: Tensor, x_hq: Tensor, y: Tensor, device_type: str):
        """Losses at z = x_hat.detach(): returns (u_e, u_r, g_R or None, loss_e, loss_r) for one batch."""
        R = self.recognizer
        z = x_hat.detach().float().requires_grad_(True)
        loss_e = self.lambda_e * self._enh_loss(z, x_hq)
        (u_e,) = torch.autograd.grad(loss_e, z)
        with self._autocast(device_type):
            out = R(z)
        rec = self._rec_loss(out.float(), y)
        g_R = None
        if self.recognizer_mode == "joint":
            # one backward through R gives both its own gradient and the upstream gradient at x_hat
            d = torch.autograd.grad(rec, [z, *self.r_params], allow_unused=True)
            dz, g_R = d[0], flatten_grads(d[1:], self.r_params)
        else:
            (dz,) = torch.autograd.grad(rec, z)
            if self.recognizer_mode == "clean":
                with self._autocast(device_type):
                    out_clean = R(x_hq)
                rec_clean = self._rec_loss(out_clean.float(), y)
                g_R = flatten_grads(torch.autograd.grad(rec_clean, self.r_params, allow_unused=True),
                                    self.r_params)
        return u_e, self.lambda_r * dz, g_R, loss_e.detach(), self.lambda_r * rec.detach()

    def __call__(self, x_lq: Tensor, x_hq: Tensor, y: Tensor) -> StepResult:
        """One GradProm step on a batch; E and R are updated in place."""
        E, R = self.enhancer, self.recognizer
        E.train()
        R.train(self.recognizer_mode != "frozen")
        dev = x_lq.device.type
        self.steps_done += 1

        # 1) one forward pass through the enhancer
        with self._autocast(dev):
            x_hat = E(x_lq)
        # 2) upstream gradients at the enhanced image (and R's own gradient)
        u_e, u_r, g_R, loss_e, loss_r = self.upstream(x_hat, x_hq, y, dev)
        n_r = 0 if g_R is None else g_R.numel()
        losses = torch.stack([loss_e, loss_r]).float()

        if self.gate_space == "parameter":
            # 3) both gradients through E; 4) one fused reduction of everything
            G = enhancer_gradient_pair(x_hat, self.e_params, u_e, u_r, self.vjp).float()
            P = G.shape[1]
            parts = [G.reshape(-1)] + ([g_R.float()] if g_R is not None else []) + [losses]
            buf = self.reducer(torch.cat(parts))
            G, g_R, losses = buf[:2 * P].view(2, P), (buf[2 * P:2 * P + n_r] if g_R is not None else None), buf[-2:]
            bad = self._nonfinite(losses, G[0], G[1], g_R)
            if bad:
                return self._skip(bad, losses)
            # 5) the strategy decides E's update (on a rescaled g_r and/or in Adam's metric, if asked)
            decision, update, task_part, scale = self._decide(G[0], G[1])
            norms = torch.stack([torch.linalg.vector_norm(G[0]), torch.linalg.vector_norm(G[1])])
        else:
            # 3') output-space gate: the cosine of the upstream gradients, reduced across workers as sums
            ue, ur = u_e.reshape(-1).float(), u_r.reshape(-1).float()
            stats = torch.stack([torch.dot(ue, ur), torch.dot(ue, ue), torch.dot(ur, ur)])
            parts = [stats] + ([g_R.float()] if g_R is not None else []) + [losses]
            buf = self.reducer(torch.cat(parts))
            stats, g_R, losses = buf[:3], (buf[3:3 + n_r] if g_R is not None else None), buf[-2:]
            bad = self._nonfinite(losses, stats[1:2], stats[2:3], g_R)
            if bad:
                return self._skip(bad, losses)
            nn_ = (stats[1] * stats[2]).sqrt()
            cos = torch.where(nn_ > 1e-20, stats[0] / nn_.clamp_min(1e-20), torch.zeros_like(nn_))
            decision, task_part, scale = self.strategy(ue, ur, cos=cos), None, None
            # exactly one VJP through E: of u_e + u_r when open, of u_e alone when closed
            update = self.reducer(enhancer_vjp(x_hat, self.e_params, decision.update.view_as(u_e)).float())
            if not bool(torch.isfinite(update).all()):
                return self._skip("the enhancer gradient", losses)
            norms = stats[1:].sqrt()  # in output space these are the upstream norms at x_hat

        # 6) one optimizer step for each model
        if task_part is not None and hasattr(self.opt_e, "set_task_part"):
            # two-part optimizer: g_e in .grad, the admitted g_r beside it (separate moments / preconditioned)
            assign_flat_grad(self.e_params, G[0])
            admitted = decision.layer_open[self.layout.segment_ids(task_part.device)] \
                if decision.layer_open is not None else decision.gate_open.expand(task_part.shape)
            self.opt_e.set_task_part(task_part, admitted)
        else:
            assign_flat_grad(self.e_params, update)
        self.opt_e.step()
        self.opt_e.zero_grad(set_to_none=True)
        if g_R is not None and self.opt_r is not None:
            assign_flat_grad(self.r_params, g_R)
            self.opt_r.step()
            self.opt_r.zero_grad(set_to_none=True)
        self.nonfinite_streak = 0

        # 7) one host sync for all logged scalars
        vals = torch.stack([losses[0], losses[1], decision.cos.float(), decision.gate_open.float(),
                            norms[0], norms[1], norms.new_ones(()) if scale is None else scale.float()]).tolist()
        layer = decision.layer_open.tolist() if decision.layer_open is not None else None
        return StepResult(False, *vals[:6], layer_open=layer, scale=vals[6])

    def _decide(self, g_e: Tensor, g_r: Tensor):
        """(decision, update, task part or None, applied scale or None) in parameter space.

        The gate decides on the unscaled pair (cos is scale-invariant; passing it keeps that exact). In the
        preconditioned metric the strategy sees s·g_e and s·g_r with s = P^½, so its cosine is the P-cosine
        ⟨P g_r, g_e⟩/(‖g_r‖_P ‖g_e‖_P) and its task part, divided by s again, is the admitted g_r."""
        scale = None
        g_r_used = g_r
        if self.scaler is not None:
            g_r_used, scale = self.scaler(g_e, g_r, self.layout)
        if self.gate_metric == "preconditioned":
            s = self.opt_e.preconditioner(g_e).sqrt()
            se = s * g_e
            decision = self.strategy(se, s * g_r_used, self.layout, cos=cosine(se, s * g_r))
            if decision.task_part is None:
                raise ValueError(f"`gate_metric='preconditioned'` needs an additive strategy, got {self.strategy!r}")
            task_part = decision.task_part / s
            return decision, g_e + task_part, task_part, scale
        decision = self.strategy(g_e, g_r_used, self.layout, cos=None if scale is None else cosine(g_e, g_r))
        return decision, decision.update, decision.task_part, scale

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _nonfinite(losses: Tensor, g_e: Tensor, g_r: Tensor, g_R: Tensor | None) -> str:
        """Name the first non-finite quantity, or "" (a host sync: the skip decision needs it)."""
        checks = [("loss_e", losses[0:1]), ("loss_r", losses[1:2]), ("g_e", g_e), ("g_r", g_r)]
        if g_R is not None:
            checks.append(("the recognizer gradient", g_R))
        flags = torch.stack([torch.isfinite(t).all() for _, t in checks]).tolist()
        return next((name for (name, _), ok in zip(checks, flags) if not ok), "")

    def _skip(self, what: str, losses: Tensor) -> StepResult:
        self.opt_e.zero_grad(set_to_none=True)
        if self.opt_r is not None:
            self.opt_r.zero_grad(set_to_none=True)
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        log.warning("step %d skipped: %s is NaN/Inf (%d in a row)", self.steps_done, what, self.nonfinite_streak)
        if self.nonfinite_streak >= self.max_nonfinite_streak:
            raise TrainingError(
                f"Training stopped at step {self.steps_done}: {self.nonfinite_streak} steps in a row had a NaN/Inf "
                f"{what}. Likely causes: a learning rate too high for this data (lower `optim.lr`), NaN/Inf pixels "
                f"or labels in the data, or loss weights (`gradprom.lambda_e`, `gradprom.lambda_r`) so large that the "
                f"gradients overflow. Raise `optim.max_nonfinite_streak` to tolerate more skipped steps.")
        le, lr_ = losses.tolist()
        nan = float("nan")
        return StepResult(True, le, lr_, nan, nan, nan, nan, nonfinite=what, scale=nan)
