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

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Moments = Literal["shared", "separate"]


class TwoPartAdam(torch.optim.Adam):
    """Adam on g_e (`p.grad`) plus a separately held, gated task part; see the module docstring.

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
        self.moments = moments
        self.preconditioned = preconditioned
        self._task: dict[nn.Parameter, tuple[Tensor, Tensor]] = {}

    # ---- what the training step calls ---------------------------------------------------------------
    def set_task_part(self, params: Sequence[nn.Parameter], parts: Sequence[Tensor], admitted: Tensor) -> None:
        """Hand over the admitted task part of the next `step()`: one tensor per parameter, and `admitted`,
        (len(params),) 1/0 per parameter tensor (where the gate opened; a weight > 0 counts as open)."""
        pairs = enumerate(zip(params, parts, strict=True))
        self._task = {p: (part.view_as(p), admitted[i]) for i, (p, part) in pairs}

    @torch.no_grad()
    def preconditioner(self, params: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> Tensor:
        """Flat P = 1/(√v̂_e+ε) that the next step will apply, given this step's g_e (one tensor per parameter).

        It is Adam's denominator after v_e absorbs g_e (plus the L2 term for adam), computed ahead of the step
        so the gate can decide in that metric."""
        out = []
        for p, g in zip(params, grads, strict=True):
            group = self._group_of(p)
            beta2, eps, wd = group["betas"][1], group["eps"], group["weight_decay"]
            state = self.state.get(p, {})
            g = g.view_as(p)
            step = float(state["step"]) + 1 if "step" in state else 1.0
            if wd and not group["decoupled_weight_decay"]:
                g = g + wd * p
            v = g * g * (1 - beta2) if "exp_avg_sq" not in state else state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
            out.append((v.sqrt() / (1 - beta2 ** step) ** 0.5 + eps).reciprocal().reshape(-1))
        return torch.cat(out)

    # ---- the optimizer step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        """torch's Adam step on `p.grad` (= g_e), then the task part handed over by `set_task_part`."""
        loss = super().step(closure)
        task, self._task = self._task, {}
        for p, (part, admitted) in task.items():
            group = self._group_of(p)
            (beta1, beta2), eps, lr = group["betas"], group["eps"], group["lr"]
            state = self.state[p]
            if "step" not in state:  # no g_e reached this parameter (torch's step skipped it)
                continue
            if "exp_avg_r" not in state:
                state["exp_avg_r"] = torch.zeros_like(p)
                state["step_r"] = torch.zeros((), dtype=p.dtype, device=p.device)
                if not self.preconditioned:
                    state["exp_avg_sq_r"] = torch.zeros_like(p)
            m_r = state["exp_avg_r"]
            if self.moments == "shared":  # m_e + m_r is Adam's first moment of g_e + task part
                m_r.lerp_(part, 1 - beta1)
                bc1 = 1 - beta1 ** float(state["step"])
                on = torch.ones((), dtype=torch.bool, device=p.device)
            else:  # separate: the task moments move only where the gate admitted g_r
                on = admitted > 0
                m_r.copy_(torch.where(on, m_r.lerp(part, 1 - beta1), m_r))
                state["step_r"].add_(on.to(p.dtype))
                bc1 = 1 - beta1 ** state["step_r"].clamp_min(1)
            if self.preconditioned:  # g_e's denominator, as torch's step just computed it
                bc2 = 1 - beta2 ** float(state["step"])
                denom = (state["exp_avg_sq"].sqrt() / bc2 ** 0.5).add_(eps)
            else:
                v_r = state["exp_avg_sq_r"]
                v_r.copy_(torch.where(on, v_r * beta2 + (1 - beta2) * part * part, v_r))
                bc2 = 1 - beta2 ** state["step_r"].clamp_min(1)
                denom = (v_r.sqrt() / bc2 ** 0.5).add_(eps)
            delta = (m_r / bc1) / denom * lr
            # a closed gate adds exact zeros, so the parameter stays torch's enhance-only Adam result
            p.sub_(torch.where(on, delta, torch.zeros_like(delta)))
        return loss

    def _group_of(self, p: nn.Parameter) -> dict:
        for group in self.param_groups:
            for q in group["params"]:
                if q is p:
                    return group
        raise ValueError("parameter is not optimised by this optimizer")


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
