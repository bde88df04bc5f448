"""The optimizers of E and R (`optim.optimizer`), and the two-part Adam behind the gate variants of issue 14.

`TwoPartAdam` is torch's own Adam (or AdamW) on the enhancement gradient g_e, which the step puts in `p.grad`,
plus a task part, the admitted share of g_r, which the step hands over separately (`set_task_part`) just
before `step()`. It serves two `gradprom` options:

* `moments: separate`: the task part keeps its own moments m_r, v_r, updated only where the gate admitted
  it (per parameter tensor; their bias correction counts those updates), and the step is
      θ ← θ − lr·(m̂_e/(√v̂_e+ε) + [open]·m̂_r/(√v̂_r+ε)).
  A closed gate is then exactly torch's enhance-only Adam step (the e-part *is* torch's Adam), and g_r
  never enters v_e, so it never shrinks the enhancement part's effective learning rate.
* `gate_metric: preconditioned`: the task part is preconditioned by g_e's second moment, P = 1/(√v̂_e+ε):
      θ ← θ − lr·P·(m̂_e + m̂_r),
  with m_r updated every step (shared moments: m_e + m_r is Adam's first moment of g_e + task part) or only
  where admitted (separate moments). With β1 = 0 the step is −lr·P·(g_e + [open]·g_r).

Weight decay (L2 for adam, decoupled for adamw) acts through the e-part only, as in torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

Moments = Literal["shared", "separate"]


class TwoPartAdam(torch.optim.Adam):
    """Adam on g_e (`p.grad`) plus a separately held, gated task part; see the module docstring.

    One parameter group. The task part's state is kept flat (one buffer over all parameters, in the group's
    order, under the state key "task"), so its update is a handful of vector operations per step.

    :param moments: "separate" (own m_r, v_r, updated where admitted) or "shared" (only with
        `preconditioned`: m_r updated every step, so m_e + m_r is the shared first moment).
    :param preconditioned: precondition the task part by g_e's second moment instead of its own.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                 moments: Moments = "separate", preconditioned: bool = False):
        if moments not in ("shared", "separate"):
            raise ValueError(f"Parameter `moments` should be 'shared' or 'separate'. Found {moments!r}.")
        if moments == "shared" and not preconditioned:
            raise ValueError("`moments='shared'` without `preconditioned` is plain Adam on the sum; use torch's Adam.")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay)
        if len(self.param_groups) != 1:
            raise ValueError("TwoPartAdam takes one parameter group (the enhancer's parameters)")
        self.moments = moments
        self.preconditioned = preconditioned
        self._pending: tuple[Tensor, Tensor] | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        """The parameters, in the order of the flat vectors this optimizer takes."""
        return self.param_groups[0]["params"]

    # ---- what the training step calls ---------------------------------------------------------------
    def set_task_part(self, part: Tensor, admitted: Tensor) -> None:
        """Hand over the task part of the next `step()`: the admitted g_r, flat over `params`, and `admitted`,
        flat 1/0 where the gate opened (per parameter tensor, expanded; a weight > 0 counts as open)."""
        self._pending = (part, admitted)

    @torch.no_grad()
    def preconditioner(self, g_e: Tensor) -> Tensor:
        """Flat P = 1/(√v̂_e+ε) that the next step will apply, given this step's flat g_e.

        It is Adam's denominator after v_e absorbs g_e (plus the L2 term for adam), computed ahead of the step
        so the gate can decide in that metric."""
        group = self.param_groups[0]
        beta2, eps, wd = group["betas"][1], group["eps"], group["weight_decay"]
        if wd and not group["decoupled_weight_decay"]:
            g_e = g_e + wd * torch.cat([p.detach().reshape(-1) for p in self.params])
        v = (1 - beta2) * g_e * g_e
        step = self._e_steps() + 1
        if step > 1:
            v = v + beta2 * self._flat_e("exp_avg_sq")
        return (v.sqrt() / (1 - beta2 ** step) ** 0.5 + eps).reciprocal()

    # ---- the optimizer step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        """torch's Adam step on `p.grad` (= g_e), then the task part handed over by `set_task_part`."""
        loss = super().step(closure)
        pending, self._pending = self._pending, None
        if pending is None:
            return loss
        a, admitted = pending
        group = self.param_groups[0]
        (beta1, beta2), eps, lr = group["betas"], group["eps"], group["lr"]
        task = self.state["task"]
        if not task:
            task["exp_avg_r"] = torch.zeros_like(a)
            task["step_r"] = torch.zeros_like(a)
            if not self.preconditioned:
                task["exp_avg_sq_r"] = torch.zeros_like(a)
        m_r, t_e = task["exp_avg_r"], self._e_steps()
        if self.moments == "shared":  # m_e + m_r is Adam's first moment of g_e + task part
            on = None
            m_r.lerp_(a, 1 - beta1)
            bc1: Tensor | float = 1 - beta1 ** t_e
        else:  # separate: the task moments move only where the gate admitted g_r
            on = admitted > 0
            m_r.copy_(torch.where(on, m_r.lerp(a, 1 - beta1), m_r))
            task["step_r"].add_(on.to(a.dtype))
            bc1 = 1 - beta1 ** task["step_r"].clamp_min(1)
        if self.preconditioned:  # g_e's denominator, as torch's step just computed it
            denom = (self._flat_e("exp_avg_sq").sqrt() / (1 - beta2 ** t_e) ** 0.5).add_(eps)
        else:
            v_r = task["exp_avg_sq_r"]
            v_r.copy_(torch.where(on, v_r * beta2 + (1 - beta2) * a * a, v_r))
            denom = (v_r.sqrt() / (1 - beta2 ** task["step_r"].clamp_min(1)).sqrt()).add_(eps)
        delta = (m_r / bc1) / denom * lr
        if on is not None:  # a closed gate adds exact zeros: the parameters stay torch's enhance-only Adam result
            delta = torch.where(on, delta, torch.zeros_like(delta))
        params = self.params
        torch._foreach_sub_(params, [d.view_as(p) for d, p in zip(delta.split([p.numel() for p in params]),
                                                                   params, strict=True)])
        return loss

    def _e_steps(self) -> float:
        state = self.state.get(self.params[0], {})
        return float(state["step"]) if "step" in state else 0.0

    def _flat_e(self, key: str) -> Tensor:
        return torch.cat([self.state[p][key].reshape(-1) for p in self.params])


def build_optimizer(params: Iterable[nn.Parameter], optimizer: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.0, moments: Moments = "shared",
                    gate_metric: Literal["euclidean", "preconditioned"] = "euclidean") -> torch.optim.Optimizer:
    """The optimizer named by `optim.optimizer`; a TwoPartAdam when the gate variants need one."""
    if optimizer == "sgd":
        if moments != "shared" or gate_metric != "euclidean":
            raise ValueError("separate moments and the preconditioned gate need adam or adamw")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {optimizer!r}; expected adam, adamw or sgd")
    decoupled = optimizer == "adamw"
    if moments == "shared" and gate_metric == "euclidean":
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=weight_decay)
    return TwoPartAdam(params, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=decoupled, moments=moments,
                       preconditioned=gate_metric == "preconditioned")
