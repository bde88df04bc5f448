"""What does the GradProm step cost against a joint step and against computing the two gradients plainly?

Times, on the same model and batch, interleaved round-robin (so machine noise hits every variant alike),
median over repeats:
  joint        a plain joint step: forward, (L_e + L_r).backward(), two optimizer steps
  floor        two plain backward() passes: forward, L_e.backward(retain_graph), L_r.backward(), two steps
  gradprom     the engine's TrainStep, parameter-space gate (two VJPs through E, or one batched VJP)
  gradprom-out the engine's TrainStep, output-space gate (one VJP through E)
and the share of the GradProm step spent in gating and bookkeeping (flattening, the fused buffer, the
non-finite check, the strategy, writing the update back), timed on the same tensors.
On CUDA every variant runs under bf16 autocast, as the engine does (`--precision fp32` turns it off), and the
peak memory of each variant is reported. `--compile BACKEND` adds the same steps with torch.compile(E)
(with AOTAutograd's donated buffers off: the sequential VJP retains E's graph for its second pass).

Usage: python benchmarks/step_overhead.py [--batch 32] [--size 64] [--repeats 15] [--device cpu|cuda]
       [--channels 16,32,64] [--recognizer-channels 16,32,64] [--precision bf16|fp32] [--compile inductor]
Targets (issue 3): gradprom/floor <= 1.15, bookkeeping <= 5 %, gradprom-out/joint <= 1.05;
(issue 14): each gate variant's own pieces (magnitude control, the two-part Adam step, the preconditioned gate)
cost <= 5 % of a plain gradprom step; the whole variant steps are printed beside it too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

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


def measure(batch: int = 32, size: int = 64, repeats: int = 15, warmup: int = 3,
            channels: tuple[int, ...] = (16, 32, 64), recognizer_channels: tuple[int, ...] = (16, 32, 64),
            device: str | torch.device = "cpu", precision: str = "auto", compile_backend: str | None = None,
            deadline: float | None = None, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Median ms per variant, the ratios, peak CUDA memory per variant; stops repeating at `deadline`
    (time.monotonic()) and says how many repeats it got. `only` keeps just the variants named."""
    device = torch.device(device)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    torch.manual_seed(0)
    E = build_enhancer("unet", 1, 1, list(channels)).to(device)
    R = build_recognizer("resnet", "classification", 1, 3, list(recognizer_channels)).to(device)
    x_hq = torch.rand(batch, 1, size, size, device=device)
    x_lq = x_hq + 0.1 * torch.randn_like(x_hq)
    y = torch.randint(0, 3, (batch,), device=device)
    opt_e = torch.optim.Adam(E.parameters(), lr=1e-5)
    opt_r = torch.optim.Adam(R.parameters(), lr=1e-5)
    lam_r = 0.1

    def joint_of(enh):
        def joint():
            with autocast():
                x_hat = enh(x_lq)
                out = R(x_hat)
            loss = F.l1_loss(x_hat.float(), x_hq) + lam_r * F.cross_entropy(out.float(), y)
            loss.backward()
            opt_e.step(), opt_r.step()
            opt_e.zero_grad(set_to_none=True), opt_r.zero_grad(set_to_none=True)
        return joint

    def floor():
        with autocast():
            x_hat = E(x_lq)
        F.l1_loss(x_hat.float(), x_hq).backward(retain_graph=True)
        with autocast():
            out = R(x_hat)
        (lam_r * F.cross_entropy(out.float(), y)).backward()
        opt_e.step(), opt_r.step()
        opt_e.zero_grad(set_to_none=True), opt_r.zero_grad(set_to_none=True)

    def step(enh, strategy=None, **kw):
        s = TrainStep(enh, R, opt_e, opt_r, strategy or GradProm(0.0), lambda_r=lam_r, autocast_dtype=dtype, **kw)
        return lambda: s(x_lq, x_hq, y)

    variants: dict[str, Callable[[], Any]] = {
        "joint": joint_of(E), "floor": floor,
        "gradprom": step(E, vjp="sequential"),
        "gradprom-batched": step(E, vjp="batched"),
        "gradprom-layer": step(E, GradProm(0.0, "layer")),
        "gradprom-out": step(E, gate_space="output"),
        # the gate variants of issue 14 (README "Gate variants under Adam"), each on the same TrainStep
        "gradprom-matched": step(E, scaler=TaskScaler("match")),
        "gradprom-clip-ema": step(E, scaler=TaskScaler("clip", ema=0.9)),
        "gradprom-separate": (lambda s: lambda: s(x_lq, x_hq, y))(TrainStep(
            E, R, build_optimizer(E.parameters(), "adam", 1e-5, moments="separate"), opt_r, GradProm(0.0),
            lambda_r=lam_r, autocast_dtype=dtype)),
        "gradprom-precond": (lambda s: lambda: s(x_lq, x_hq, y))(TrainStep(
            E, R, build_optimizer(E.parameters(), "adam", 1e-5, gate_metric="preconditioned"), opt_r,
            GradProm(0.0), lambda_r=lam_r, autocast_dtype=dtype, gate_metric="preconditioned")),
        "gradprom-sgd": (lambda s: lambda: s(x_lq, x_hq, y))(TrainStep(
            E, R, build_optimizer(E.parameters(), "sgd", 1e-5), opt_r, GradProm(0.0), lambda_r=lam_r,
            autocast_dtype=dtype)),
    }
    errors: dict[str, str] = {}
    if compile_backend:
        # the sequential VJP back-propagates twice through one graph (retain_graph=True), which AOTAutograd's
        # donated buffers forbid ("requires retain_graph=False"); without them the compiled backward allows it
        torch._functorch.config.donated_buffer = False
        E_c = torch.compile(E, backend=compile_backend)
        variants.update({"joint-compiled": joint_of(E_c), "gradprom-compiled": step(E_c, vjp="sequential"),
                         "gradprom-batched-compiled": step(E_c, vjp="batched")})

    # gating + bookkeeping pieces of the parameter-space step, on tensors of the real size
    e_params = list(E.parameters())
    r_params = list(R.parameters())
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

    # what each gate variant adds to the step, timed on tensors of the real size (on a busy machine whole steps
    # differ by more than these pieces cost, so the pieces are the figure to read)
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
              "separate step": lambda: opt_step(sep, True), "precond gate": precond_gate,
              "precond step": lambda: opt_step(pre, True)}
    if only is not None:
        variants = {k: v for k, v in variants.items() if k in only}

    times: dict[str, list[float]] = {k: [] for k in variants}
    first: dict[str, float] = {}
    peak: dict[str, int] = {k: 0 for k in variants}
    rounds = 0
    for r in range(warmup + repeats):
        if deadline is not None and r > warmup and time.monotonic() > deadline:
            break
        for name, fn in list(variants.items()):
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            try:
                fn()
                sync(device)
            except Exception as e:  # e.g. torch.compile cannot trace a batched VJP: report it, keep the rest
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                del variants[name], times[name]
                opt_e.zero_grad(set_to_none=True), opt_r.zero_grad(set_to_none=True)
                continue
            dt = time.perf_counter() - t
            first.setdefault(name, dt)
            if device.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device))
            if r >= warmup:
                times[name].append(dt)
        rounds = r + 1
    med = {k: statistics.median(v) * 1e3 for k, v in times.items() if v}
    ptimes: dict[str, list[float]] = {k: [] for k in pieces}
    for r in range(5 + 10 * max(rounds - warmup, 1)):
        for name, fn in pieces.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r >= 5:
                ptimes[name].append(time.perf_counter() - t)
    pm = {k: statistics.median(v) * 1e3 for k, v in ptimes.items()}
    variant_ms = {"gradprom-matched": pm["match"], "gradprom-clip-ema": pm["clip + ema"],
                  "gradprom-separate": pm["separate step"] - pm["adam step"],
                  "gradprom-precond": pm["precond gate"] + pm["precond step"] - pm["adam step"], "gradprom-sgd": 0.0}

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if a in med and b in med else None

    ratios = {"gradprom/joint": ratio("gradprom", "joint"), "gradprom/floor": ratio("gradprom", "floor"),
              "gradprom-batched/floor": ratio("gradprom-batched", "floor"),
              "gradprom-batched/gradprom": ratio("gradprom-batched", "gradprom"),
              "gradprom-layer/floor": ratio("gradprom-layer", "floor"),
              "gradprom-out/joint": ratio("gradprom-out", "joint"),
              "bookkeeping/gradprom": ratio("bookkeeping", "gradprom"),
              **{f"{k}/gradprom": ratio(k, "gradprom") for k in variant_ms},
              **{f"{k} own pieces/gradprom": (v / med["gradprom"] if "gradprom" in med else None)
                 for k, v in variant_ms.items()}}
    if compile_backend:
        ratios.update({"gradprom-compiled/gradprom": ratio("gradprom-compiled", "gradprom"),
                       "joint-compiled/joint": ratio("joint-compiled", "joint"),
                       "gradprom-batched-compiled/gradprom-batched": ratio("gradprom-batched-compiled",
                                                                           "gradprom-batched")})
    return {"device": str(device), "precision": precision, "batch": batch, "size": size,
            "enhancer_channels": list(channels), "recognizer_channels": list(recognizer_channels),
            "enhancer_params": sum(p.numel() for p in e_params), "threads": torch.get_num_threads(),
            "compile_backend": compile_backend, "repeats": max(rounds - warmup, 0), "ms": med,
            "first_call_ms": {k: v * 1e3 for k, v in first.items()}, "ratios": ratios,
            "peak_mem_mib": {k: v / 2 ** 20 for k, v in peak.items()} if device.type == "cuda" else None,
            "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels", default="16,32,64", help="enhancer U-Net channels")
    ap.add_argument("--recognizer-channels", default="16,32,64", help="recognizer ResNet channels")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 autocast on CUDA (the engine's setting), fp32 on CPU")
    ap.add_argument("--compile", dest="compile_backend", default=None, metavar="BACKEND",
                    help="also time the steps with torch.compile(E, backend=BACKEND), e.g. inductor")
    args = ap.parse_args()
    chans = tuple(int(c) for c in args.channels.split(","))
    rchans = tuple(int(c) for c in args.recognizer_channels.split(","))
    r = measure(args.batch, args.size, args.repeats, args.warmup, chans, rchans, args.device, args.precision,
                args.compile_backend)
    print(f"device {r['device']} ({r['precision']}) · threads {r['threads']} · batch {args.batch} × 1 × "
          f"{args.size}² · enhancer U-Net {list(chans)} ({r['enhancer_params']:,} params) · resnet recognizer "
          f"{list(rchans)} · median of {r['repeats']}")
    for k, v in r["ms"].items():
        mem = f"   peak {r['peak_mem_mib'][k]:8.0f} MiB" if r["peak_mem_mib"] else ""
        print(f"  {k:26s} {v:8.2f} ms{mem}")
    for k, e in r["errors"].items():
        print(f"  {k:26s} failed: {e}")
    print("ratios (measured side by side in this run):")
    targets = {"gradprom/floor": "   (target <= 1.15)", "gradprom-out/joint": "   (target <= 1.05)",
               "bookkeeping/gradprom": "   (target <= 5 %)",
               **{k: "   (target <= 5 %)" for k in r["ratios"] if k.endswith("own pieces/gradprom")}}
    for k, v in r["ratios"].items():
        if v is not None:
            print(f"  {k:42s} {v:.3f}{targets.get(k, '')}")


if __name__ == "__main__":
    main()
