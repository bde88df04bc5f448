"""What does the GradProm step cost against a joint step and against computing the two gradients plainly?

Times, on the same model and batch, interleaved round-robin (so machine noise hits every variant alike),
median over repeats:
  joint        a plain joint step: forward, (L_e + L_r).backward(), two optimizer steps
  floor        two plain backward() passes: forward, L_e.backward(retain_graph), L_r.backward(), two steps
  gradprom     the engine's TrainStep, parameter-space gate (two VJPs through E, or one batched VJP)
  gradprom-out the engine's TrainStep, output-space gate (one VJP through E)
  the gate variants of issue 14 (README "Gate variants under Adam"), each the same TrainStep with one option:
    gradprom-matched   gradprom.scale: match (g_r rescaled to |g_e|)
    gradprom-clip-ema  gradprom.scale: clip, scale_ema 0.9
    gradprom-separate  gradprom.moments: separate (TwoPartAdam, own moments for the admitted g_r)
    gradprom-precond   gradprom.gate_metric: preconditioned (the gate in Adam's metric, TwoPartAdam)
    gradprom-sgd       optim.optimizer: sgd
and the share of the GradProm step spent in gating and bookkeeping (flattening, the fused buffer, the
non-finite check, the strategy, writing the update back), timed on the same tensors.

Usage: python benchmarks/step_overhead.py [--batch 32] [--size 64] [--repeats 15] [--device cpu|cuda]
Targets (issue 3): gradprom/floor <= 1.15, bookkeeping <= 5 %, gradprom-out/joint <= 1.05;
(issue 14): each variant's extra time over the plain gradprom step <= 5 % of a step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gradprom.platform.gradients import assign_flat_grad, flatten_grads
from gradprom.platform.magnitude import TaskScaler
from gradprom.platform.models import build_enhancer, build_recognizer
from gradprom.platform.optim import TwoPartAdam, build_optimizer
from gradprom.platform.step import TrainStep
from gradprom.platform.strategies import GradProm, ParamLayout, cosine


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels", default="16,32,64", help="enhancer U-Net channels")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    chans = [int(c) for c in args.channels.split(",")]

    torch.manual_seed(0)
    E = build_enhancer("unet", 1, 1, chans).to(device)
    R = build_recognizer("resnet", "classification", 1, 3, [16, 32, 64]).to(device)
    x_hq = torch.rand(args.batch, 1, args.size, args.size, device=device)
    x_lq = x_hq + 0.1 * torch.randn_like(x_hq)
    y = torch.randint(0, 3, (args.batch,), device=device)
    opt_e = torch.optim.Adam(E.parameters(), lr=1e-5)
    opt_r = torch.optim.Adam(R.parameters(), lr=1e-5)
    lam_r = 0.1

    def joint():
        x_hat = E(x_lq)
        loss = F.l1_loss(x_hat, x_hq) + lam_r * F.cross_entropy(R(x_hat), y)
        loss.backward()
        opt_e.step(), opt_r.step()
        opt_e.zero_grad(set_to_none=True), opt_r.zero_grad(set_to_none=True)

    def floor():
        x_hat = E(x_lq)
        F.l1_loss(x_hat, x_hq).backward(retain_graph=True)
        (lam_r * F.cross_entropy(R(x_hat), y)).backward()
        opt_e.step(), opt_r.step()
        opt_e.zero_grad(set_to_none=True), opt_r.zero_grad(set_to_none=True)

    steps = {
        "gradprom": TrainStep(E, R, opt_e, opt_r, GradProm(0.0), lambda_r=lam_r, vjp="sequential"),
        "gradprom-batched": TrainStep(E, R, opt_e, opt_r, GradProm(0.0), lambda_r=lam_r, vjp="batched"),
        "gradprom-layer": TrainStep(E, R, opt_e, opt_r, GradProm(0.0, "layer"), lambda_r=lam_r),
        "gradprom-out": TrainStep(E, R, opt_e, opt_r, GradProm(0.0), lambda_r=lam_r, gate_space="output"),
        "gradprom-matched": TrainStep(E, R, opt_e, opt_r, GradProm(0.0), lambda_r=lam_r,
                                      scaler=TaskScaler("match")),
        "gradprom-clip-ema": TrainStep(E, R, opt_e, opt_r, GradProm(0.0), lambda_r=lam_r,
                                       scaler=TaskScaler("clip", ema=0.9)),
        "gradprom-separate": TrainStep(E, R, build_optimizer(E.parameters(), "adam", 1e-5, moments="separate"),
                                       opt_r, GradProm(0.0), lambda_r=lam_r),
        "gradprom-precond": TrainStep(E, R, build_optimizer(E.parameters(), "adam", 1e-5,
                                                            gate_metric="preconditioned"),
                                      opt_r, GradProm(0.0), lambda_r=lam_r, gate_metric="preconditioned"),
        "gradprom-sgd": TrainStep(E, R, build_optimizer(E.parameters(), "sgd", 1e-5), opt_r, GradProm(0.0),
                                  lambda_r=lam_r),
    }
    variants = {"joint": joint, "floor": floor, **{k: (lambda s=s: s(x_lq, x_hq, y)) for k, s in steps.items()}}

    # gating + bookkeeping pieces of the parameter-space step, on tensors of the real size
    e_params = [p for p in E.parameters()]
    r_params = [p for p in R.parameters()]
    layout = ParamLayout([str(i) for i in range(len(e_params))], [p.numel() for p in e_params])
    fake_e = [torch.randn_like(p) for p in e_params]
    fake_r = [torch.randn_like(p) for p in e_params]
    fake_R = [torch.randn_like(p) for p in r_params]
    gate = GradProm(0.0)
    P = layout.numel

    def bookkeeping():
        G = torch.stack([flatten_grads(fake_e, e_params), flatten_grads(fake_r, e_params)])
        buf = torch.cat([G.reshape(-1), flatten_grads(fake_R, r_params), torch.zeros(2, device=device)])
        G = buf[:2 * P].view(2, P)
        torch.stack([torch.isfinite(t).all() for t in (buf[-2:], G[0], G[1], buf[2 * P:-2])]).tolist()
        d = gate(G[0], G[1], layout)
        torch.stack([d.cos, d.gate_open, G[0].norm(), G[1].norm()]).tolist()
        assign_flat_grad(e_params, d.update)
        assign_flat_grad(r_params, buf[2 * P:-2])

    variants["bookkeeping"] = bookkeeping

    # what each gate variant adds to the step, timed on tensors of the real size (on a busy machine the whole
    # steps above differ by more than these pieces cost, so the pieces are the figure to read)
    ge, gr = torch.randn(P, device=device), torch.randn(P, device=device)
    shadow = [torch.nn.Parameter(p.detach().clone()) for p in e_params]
    adam_ref = torch.optim.Adam(shadow, lr=1e-5)
    sep = TwoPartAdam(shadow, lr=1e-5, moments="separate")
    pre = TwoPartAdam(shadow, lr=1e-5, moments="shared", preconditioned=True)
    ones = torch.ones(P, device=device)
    scaler, scaler_ema = TaskScaler("match"), TaskScaler("clip", ema=0.9)

    def opt_step(opt, task: bool):
        assign_flat_grad(shadow, ge)
        if task:
            opt.set_task_part(gr, ones)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def precond_gate():
        sq = pre.preconditioner(ge).sqrt()
        d = gate(sq * ge, sq * gr, layout, cos=cosine(sq * ge, sq * gr))
        return d.task_part / sq

    pieces = {"adam step": lambda: opt_step(adam_ref, False),
              "match": lambda: (scaler(ge, gr, layout), cosine(ge, gr)),
              "clip + ema": lambda: (scaler_ema(ge, gr, layout), cosine(ge, gr)),
              "separate step": lambda: opt_step(sep, True),
              "precond gate": precond_gate,
              "precond step": lambda: opt_step(pre, True)}

    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.warmup + args.repeats):
        for name, fn in variants.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ptimes: dict[str, list[float]] = {k: [] for k in pieces}
    for r in range(5 + 10 * args.repeats):
        for name, fn in pieces.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r >= 5:
                ptimes[name].append(time.perf_counter() - t)
    pm = {k: statistics.median(v) for k, v in ptimes.items()}
    extra = {"gradprom-matched": pm["match"], "gradprom-clip-ema": pm["clip + ema"],
             "gradprom-separate": pm["separate step"] - pm["adam step"],
             "gradprom-precond": pm["precond gate"] + pm["precond step"] - pm["adam step"], "gradprom-sgd": 0.0}

    n_e = sum(p.numel() for p in e_params)
    print(f"device {device} · threads {torch.get_num_threads()} · batch {args.batch} × 1 × {args.size}² · "
          f"enhancer U-Net {chans} ({n_e:,} params) · resnet recognizer · median of {args.repeats}")
    for k in variants:
        print(f"  {k:18s} {med[k] * 1e3:8.2f} ms")
    print("ratios (measured side by side in this run):")
    print(f"  gradprom / joint            {med['gradprom'] / med['joint']:.3f}")
    print(f"  gradprom / floor            {med['gradprom'] / med['floor']:.3f}   (target <= 1.15)")
    print(f"  gradprom-batched / floor    {med['gradprom-batched'] / med['floor']:.3f}")
    print(f"  gradprom-layer / floor      {med['gradprom-layer'] / med['floor']:.3f}")
    print(f"  gradprom-out / joint        {med['gradprom-out'] / med['joint']:.3f}   (target <= 1.05)")
    print(f"  bookkeeping / gradprom step {med['bookkeeping'] / med['gradprom']:.1%}   (target <= 5 %)")
    print("gate variants beside the plain gradprom step: whole steps (noisy on a busy machine), and what the")
    print(f"variant's own pieces cost, timed alone (median of {10 * args.repeats}), as a share of the gradprom step "
          "(target <= 5 %):")
    for k in ("gradprom-matched", "gradprom-clip-ema", "gradprom-separate", "gradprom-precond", "gradprom-sgd"):
        print(f"  {k:18s} {med[k] * 1e3:8.2f} ms  vs gradprom {med['gradprom'] * 1e3:8.2f} ms  ratio "
              f"{med[k] / med['gradprom']:.3f}   variant pieces {extra[k] * 1e3:6.2f} ms = "
              f"{extra[k] / med['gradprom']:.1%} of a step")


if __name__ == "__main__":
    main()
