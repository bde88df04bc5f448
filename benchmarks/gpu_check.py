"""The GPU path, measured in one run (issue 20): writes results.json and summary.md into --out.

Stages, each with its own time cap; a stage that fails records its error and the script goes on:
  env      torch/CUDA/GPU versions, which of the modules the engine needs are importable
  tests    the unit tests of the step, the strategies and the precision path with GRADPROM_TEST_DEVICE=<device>
  bf16     the same training steps (same seed, same batches) with bf16 autocast and in fp32: identical gate
           decisions, mean |Δcos|, final PSNR of both; and, at the fp32 run's own weights and batches, what the
           bf16 step would have decided (numerics alone, without the two trajectories drifting apart), also with
           only E's or only R's passes in bf16 (which network moves the cosine)
  step     benchmarks/step_overhead.py at the paper preset's model sizes, 128² and 256²: sequential vs batched
           VJP, GradProm/joint, GradProm/two-backward, ms per step, peak memory
  compile  the same with torch.compile(E): first-call (compile) time and whether it pays
  ray      Ray Train with one GPU worker (`gradprom train --workers 1 --gpus-per-worker 1`), if Ray imports
  cell     one cell of the `paper` preset per task, timed for a few hundred steps, extrapolated to the grid

It runs from a checkout without installing the project: `PYTHONPATH=<checkout> python3 benchmarks/gpu_check.py`
(benchmarks/gpu_check.sh also unpacks the wheels that scripts/gpu_wheels.sh downloaded). `--dry-run` runs every
stage on the CPU at tiny sizes, in about 30 s on 2 idle cores (CI runs it: tests/test_gpu_check.py).
On a machine lent through a tool that returns only what is written under $OUT:
`benchmarks/gpu_check.sh --out-parent "$OUT"` writes $OUT/<date>-<gpu>/, the folder to commit under docs/gpu/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the checkout and step_overhead.py, without an install

import torch  # noqa: E402

# what the stages import, by distribution (ray is optional: its wheel alone nearly fills the 64 MiB carry)
MODULES = ("numpy", "pydantic", "pydantic_core", "yaml", "monai", "torchjd", "torchmetrics", "qpsolvers",
           "quadprog", "scipy", "pytest", "hypothesis", "pyarrow", "matplotlib", "ray")
COMPILE_VARIANTS = ("joint", "gradprom", "gradprom-batched", "joint-compiled", "gradprom-compiled",
                    "gradprom-batched-compiled")
FP32_VARIANTS = ("joint", "gradprom", "gradprom-out")
TEST_FILES = ("tests/platform/test_step.py", "tests/platform/test_strategies.py", "tests/platform/test_precision.py")


@dataclass
class Plan:
    """Sizes and time caps of one run."""

    device: str
    preset: str  # grid preset whose models the bf16 and cell stages use
    step_sizes: list[tuple[int, int]]  # (image side, batch) for the step benchmark
    step_channels: tuple[int, ...]
    step_repeats: int
    compile_backend: str
    bf16_steps: int
    bf16_batch: int | None  # None: the preset's
    cell_steps: int
    cell_warmup: int
    tests_select: str | None  # pytest -k expression (None = all tests of TEST_FILES)
    ray: bool
    import_modules: bool  # env: import each module (a GPU box's real test) or only look it up (a fast dry run)
    caps: dict[str, float] = field(default_factory=dict)


FULL = Plan(device="cuda", preset="paper", step_sizes=[(128, 32), (256, 16)], step_channels=(32, 64, 128, 256),
            step_repeats=15, compile_backend="inductor", bf16_steps=200, bf16_batch=None, cell_steps=300,
            cell_warmup=10, tests_select=None, ray=True, import_modules=True,
            caps={"tests": 90, "bf16": 60, "step": 60, "compile": 60, "ray": 60, "cell": 45})
DRY = Plan(device="cpu", preset="micro", step_sizes=[(32, 4)], step_channels=(4, 8), step_repeats=2,
           compile_backend="aot_eager", bf16_steps=8, bf16_batch=4, cell_steps=4, cell_warmup=1,
           tests_select="test_values or test_gate_at_exactly_tau_is_closed or sees_fp32", ray=False,
           import_modules=False,
           # generous: a dry run checks that every stage works, and CI machines are shared and slow
           caps={"tests": 240, "bf16": 120, "step": 60, "compile": 120, "ray": 120, "cell": 60})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------
# env
def stage_env(plan: Plan, deadline: float) -> dict[str, Any]:
    """Versions, the GPU, TF32 flags and which modules import (their absence explains skipped stages)."""
    mods: dict[str, str | None] = {}
    for m in MODULES:
        if m == "ray" or not plan.import_modules:  # importing Ray takes seconds; whether it is there matters
            mods[m] = _dist_version(m) if importlib.util.find_spec(m) else None
            continue
        try:
            mods[m] = getattr(importlib.import_module(m), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a broken optional module is a finding, not a crash
            mods[m] = None if isinstance(e, ImportError) else f"broken: {type(e).__name__}: {e}"
    cuda = torch.cuda.is_available()
    gpu = None
    if cuda:
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2 ** 30,
               "count": torch.cuda.device_count()}
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "cuda_available": cuda, "gpu": gpu,
            "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
            "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
            "cpu_threads": torch.get_num_threads(), "modules": mods,
            "missing": [m for m, v in mods.items() if v is None]}


# ---------------------------------------------------------------------------------------------------------
# tests
def stage_tests(plan: Plan, deadline: float, out: Path) -> dict[str, Any]:
    """pytest of the step/strategy/precision tests on the device, in a subprocess; counts from its JUnit XML."""
    if importlib.util.find_spec("pytest") is None or importlib.util.find_spec("hypothesis") is None:
        return {"status": "skipped", "reason": "pytest or hypothesis not installed"}
    junit = out / "pytest-junit.xml"
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if plan.tests_select:
        cmd += ["-k", plan.tests_select]
    env = {**os.environ, "GRADPROM_TEST_DEVICE": plan.device,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    rc, log = run_until(cmd, env, deadline)
    (out / "pytest.log").write_text(log)
    res: dict[str, Any] = {"status": "ok" if rc == 0 else "failed", "returncode": rc, "device": plan.device,
                           "command": " ".join(["GRADPROM_TEST_DEVICE=" + plan.device, "python -m pytest",
                                                *cmd[3:]]).replace(str(out), "<out>"),
                           "log_tail": log[-3000:]}
    if junit.is_file():
        suites = ET.parse(junit).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        failed = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                               "message": (bad.get("message") or "")[:400]})
        res.update(counts=counts, failed=failed[:50])
    return res


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def run_until(cmd: list[str], env: dict[str, str], deadline: float) -> tuple[int | str, str]:
    """(return code or "timeout", stdout + stderr) of `cmd` run in the checkout, stopped at `deadline`."""
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=max(5.0, deadline - time.monotonic()))
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        return "timeout", _text(e.stdout) + _text(e.stderr)


def _text(b: bytes | str | None) -> str:
    """A timed-out subprocess's partial output (bytes even with text=True)."""
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


# ---------------------------------------------------------------------------------------------------------
# shared set-up: a grid cell's config, phantom data, models (as the local loop builds them)
def cell_setup(preset: str, task: str, device: torch.device, num_train: int, batch: int | None = None,
               strategy: str = "gradprom") -> dict[str, Any]:
    """Config, datasets and models of one grid cell (degradation gaussian, seed 0) with `num_train` images."""
    from gradprom.experiments.grid import PRESETS, Cell, GridSpec
    from gradprom.platform.config import build_config
    from gradprom.platform.data.dataset import SPLITS, EnhancementDataset
    from gradprom.platform.data.degradations import parse_degradation
    from gradprom.platform.data.phantom_splits import load_phantom_splits

    cell = Cell(task, "gaussian", strategy, 0)
    raw = GridSpec(preset=preset, device=device.type).cell_config(cell, out=tempfile.gettempdir())
    p = PRESETS[preset]
    # fewer images than the preset (phantoms take ~3 ms each to draw at 128²): the cost per step is the same,
    # and the cell stage scales its validation time back to the preset's split size
    raw["data"].update(num_train=min(num_train, p.num_train), num_val=min(128, p.num_val), num_test=min(16, p.num_test))
    if batch:
        raw["data"]["batch_size"] = batch
    cfg = build_config(raw, source=f"gpu_check cell {cell.id}")
    # the phantom branch of datasets.build_datasets: its store branch imports pyarrow, absent on a bare GPU box
    sets, info = load_phantom_splits(cfg)
    deg = parse_degradation(cfg.data.degradation)
    datasets = {s: EnhancementDataset(sets[s], deg, cfg.task, cfg.seed, s) for s in SPLITS}
    return {"cfg": cfg, "info": info, "deg": deg, "datasets": datasets, "cell": cell.id}


def build_models(cfg, info, scale: int, device: torch.device):
    """loop.build_models when loop.py imports (it needs pyarrow and matplotlib), else the same steps here."""
    try:
        from gradprom.platform.build import build_models as loop_build
        return loop_build(cfg, info, scale, device), "loop.build_models"
    except ImportError:
        pass
    from types import SimpleNamespace

    from gradprom.platform.models import build_enhancer, build_recognizer

    torch.manual_seed(cfg.seed)
    E = build_enhancer(cfg.model.enhancer, info.channels, scale, cfg.model.enhancer_channels).to(device)
    R = build_recognizer(cfg.recognizer_name, cfg.task, info.channels, info.num_outputs(cfg.task),
                         cfg.model.recognizer_channels, norm=cfg.model.recognizer_norm).to(device)
    opt_e = torch.optim.Adam(E.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    opt_r = torch.optim.Adam(R.parameters(), lr=cfg.optim.lr_recognizer, weight_decay=cfg.optim.weight_decay)
    return SimpleNamespace(enhancer=E, recognizer=R, opt_e=opt_e, opt_r=opt_r), "gpu_check (loop.py not importable)"


def epoch_batches(ds, cfg, device: torch.device, n: int):
    """The first n training batches in the loop's order (seeded shuffle per epoch, fresh noise per epoch)."""
    from torch.utils.data import DataLoader

    epoch = 0
    while n > 0:
        ds.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        for b in DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=True, generator=gen, drop_last=True):
            if n <= 0:
                return
            n -= 1
            yield (b["x_lq"].to(device, non_blocking=True), b["x_hq"].to(device, non_blocking=True),
                   b["y"].to(device, non_blocking=True))
        epoch += 1


@torch.no_grad()
def val_psnr(E, ds, device: torch.device, batch: int = 64) -> float:
    """Mean PSNR (dB) of E's fp32 output on a split (both precisions' weights judged alike)."""
    from torch.utils.data import DataLoader

    from gradprom.platform.metrics import psnr

    E.eval()
    vals = [psnr(E(b["x_lq"].to(device)).float(), b["x_hq"].to(device)) for b in DataLoader(ds, batch_size=batch)]
    E.train()
    return float(torch.cat(vals).mean())


# ---------------------------------------------------------------------------------------------------------
# bf16
def stage_bf16(plan: Plan, deadline: float) -> dict[str, Any]:
    """Same seed, same batches, fp32 and bf16 autocast; gate decisions, cosines and final PSNR compared. The
    fp32 reference is strict fp32: cuDNN's TF32 convolutions (on by default) are off for this stage."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _bf16_vs_fp32(plan, deadline)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _bf16_vs_fp32(plan: Plan, deadline: float) -> dict[str, Any]:
    from gradprom.platform.gradients import enhancer_gradient_pair
    from gradprom.platform.step import TrainStep

    device = torch.device(plan.device)
    n = plan.bf16_steps
    setup = cell_setup(plan.preset, "classification", device, num_train=8 * (plan.bf16_batch or 32),
                       batch=plan.bf16_batch)
    cfg = setup["cfg"]
    batches = list(epoch_batches(setup["datasets"]["train"], cfg, device, n))

    def make(dtype):
        m, how = build_models(cfg, setup["info"], setup["deg"].scale, device)
        s = TrainStep.from_config(cfg, m.enhancer, m.recognizer, m.opt_e, m.opt_r, device=device)
        s.autocast_dtype = dtype  # on CUDA from_config already picks bf16; on a CPU dry run CPU autocast
        return m, s, how

    def probe(s: TrainStep, x_lq, x_hq, y, e_bf16: bool, r_bf16: bool):
        """What the step decides at s's current weights and this batch with E's and/or R's passes in bf16,
        without updating anything (the gate's inputs are upcast to fp32, as the step does)."""
        E, R = s.enhancer, s.recognizer
        saved = [b.detach().clone() for b in (*E.buffers(), *R.buffers())]  # batch-norm statistics
        old, s.autocast_dtype = s.autocast_dtype, (torch.bfloat16 if r_bf16 else None)  # upstream() runs R
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=e_bf16):
                x_hat = E(x_lq)
            u_e, u_r, _, _, _ = s.upstream(x_hat, x_hq, y, device.type)
            G = enhancer_gradient_pair(x_hat, s.e_params, u_e, u_r, s.vjp)
            d = s.strategy(G[0].float(), G[1].float(), s.layout)
            dtypes = {"x_hat": str(x_hat.dtype), "u_e": str(u_e.dtype), "grads": str(G.dtype)}
            return float(d.cos), float(d.gate_open), dtypes
        finally:
            s.autocast_dtype = old
            for b, v in zip((*E.buffers(), *R.buffers()), saved, strict=True):
                b.copy_(v)

    # which passes run in bf16 in each probe: both (the engine's setting), or one network alone
    probes = {"both": (True, True), "enhancer_only": (True, False), "recognizer_only": (False, True)}
    probed: dict[str, dict[str, list[float]]] = {k: {"cos": [], "gate": []} for k in probes}
    dtypes: dict[str, str] = {}
    runs: dict[str, dict[str, list]] = {}
    done = {}
    # the fp32 run (with its probes, the dearer one) gets 60 % of the cap; the bf16 run then repeats its steps
    fp32_deadline = time.monotonic() + 0.6 * (deadline - time.monotonic())
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        m, s, built_by = make(dtype)
        rec = {"cos": [], "gate": [], "loss_e": []}
        t0 = time.perf_counter()
        for i, (x_lq, x_hq, y) in enumerate(batches):
            if time.monotonic() > (fp32_deadline if name == "fp32" else deadline) or i >= done.get("fp32", n):
                break
            if name == "fp32":  # numerics alone: the bf16 decisions at the fp32 run's weights
                for pname, (e16, r16) in probes.items():
                    c, g, dt = probe(s, x_lq, x_hq, y, e16, r16)
                    probed[pname]["cos"].append(c), probed[pname]["gate"].append(g)
                    dtypes = dtypes or dt
            r = s(x_lq, x_hq, y)
            rec["cos"].append(r.cos), rec["gate"].append(r.gate_open), rec["loss_e"].append(r.loss_e)
        sync(device)
        rec["seconds"] = time.perf_counter() - t0
        rec["final_psnr"] = val_psnr(m.enhancer, setup["datasets"]["val"], device)
        runs[name] = rec
        done[name] = len(rec["cos"])
    k = min(done.values())
    c32, c16 = runs["fp32"]["cos"][:k], runs["bf16"]["cos"][:k]
    g32, g16 = runs["fp32"]["gate"][:k], runs["bf16"]["gate"][:k]
    kp = len(probed["both"]["cos"])
    pc32, pg32 = runs["fp32"]["cos"][:kp], runs["fp32"]["gate"][:kp]
    tau = cfg.gradprom.tau
    same_weights: dict[str, Any] = {"steps": kp}
    for pname, pr in probed.items():
        d_cos = [abs(a - b) for a, b in zip(pc32, pr["cos"], strict=True)]
        flips = [{"step": i + 1, "cos_fp32": pc32[i], "cos_bf16": pr["cos"][i]}
                 for i in range(kp) if pg32[i] != pr["gate"][i]]
        same_weights[pname] = {
            "identical_gate_share": _share(pg32, pr["gate"]), "mean_abs_dcos": _mean(d_cos),
            "max_abs_dcos": max(d_cos, default=math.nan), "flips": flips[:20],
            # flips of a noisy cosine sit near tau; compare with how far from tau the cosine usually is
            "flip_median_dist_to_tau": statistics.median([abs(f["cos_fp32"] - tau) for f in flips]) if flips
            else None,
            "median_dist_to_tau": statistics.median([abs(c - tau) for c in pc32]) if pc32 else None}
    both = same_weights["both"]
    same_weights.update(identical_gate_share=both["identical_gate_share"], mean_abs_dcos=both["mean_abs_dcos"])
    trajectories = {
        "steps": k, "identical_gate_share": _share(g32, g16),
        "mean_abs_dcos": _mean([abs(a - b) for a, b in zip(c32, c16, strict=True)]),
        "gate_open_rate": {"fp32": _mean(g32), "bf16": _mean(g16)},
        "mean_cos": {"fp32": _mean(c32), "bf16": _mean(c16)},
        "final_psnr": {"fp32": runs["fp32"]["final_psnr"], "bf16": runs["bf16"]["final_psnr"]},
        "final_loss_e": {"fp32": runs["fp32"]["loss_e"][k - 1] if k else None,
                         "bf16": runs["bf16"]["loss_e"][k - 1] if k else None},
        "seconds": {"fp32": runs["fp32"]["seconds"], "bf16": runs["bf16"]["seconds"]},
    }
    # "changes the gate": more than 1 % of decisions differ at identical weights, or the cosine moves by > 0.01
    changed = both["identical_gate_share"] < 0.99 or both["mean_abs_dcos"] > 0.01
    verdict = (f"bf16 changes the gate: at identical weights and batches {1 - both['identical_gate_share']:.1%} of "
               f"the decisions differ from fp32 (mean |Δcos| {both['mean_abs_dcos']:.3g}); enhancer-only bf16 "
               f"{1 - same_weights['enhancer_only']['identical_gate_share']:.1%}, recognizer-only bf16 "
               f"{1 - same_weights['recognizer_only']['identical_gate_share']:.1%}" if changed else
               f"bf16 leaves the gate as fp32 has it ({both['identical_gate_share']:.1%} identical decisions, "
               f"mean |Δcos| {both['mean_abs_dcos']:.3g})")
    return {"status": "ok" if k == n else "truncated", "device": plan.device, "cell": setup["cell"],
            "batch": cfg.data.batch_size, "image_size": cfg.data.image_size, "steps_asked": n, "tau": tau,
            "models_built_by": built_by, "dtypes_under_autocast": dtypes, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "same_weights": same_weights, "trajectories": trajectories, "bf16_changes_gate": changed,
            "verdict": verdict,
            "cos_series": {"fp32": c32, "bf16": c16, "bf16_at_fp32_weights": probed["both"]["cos"]}}


def _share(a: list[float], b: list[float]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else math.nan


def _mean(v: list[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return statistics.fmean(v) if v else math.nan


# ---------------------------------------------------------------------------------------------------------
# step, compile
def stage_step(plan: Plan, deadline: float, compile_backend: str | None = None) -> dict[str, Any]:
    """step_overhead.measure at each size (the compile stage: the first size only, with torch.compile(E))."""
    import step_overhead

    # (size, batch, precision, variants): every size in the engine's precision; on CUDA also the first size with
    # `run.precision: fp32`, the price of keeping bf16 rounding out of the gate
    runs = [(size, batch, "auto", None) for size, batch in plan.step_sizes]
    if compile_backend:
        runs = [(*plan.step_sizes[0], "auto", COMPILE_VARIANTS)]
    elif plan.device == "cuda":
        runs.append((*plan.step_sizes[0], "fp32", FP32_VARIANTS))
    out = {}
    for i, (size, batch, precision, only) in enumerate(runs):
        key = f"{size}x{batch}" + ("-fp32" if precision == "fp32" else "")
        # split what is left of the cap between the runs still to come
        share = (deadline - time.monotonic()) / (len(runs) - i)
        try:
            out[key] = step_overhead.measure(
                batch=batch, size=size, repeats=plan.step_repeats, warmup=2, channels=plan.step_channels,
                recognizer_channels=plan.step_channels, device=plan.device, precision=precision,
                compile_backend=compile_backend, deadline=time.monotonic() + share, only=only)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at 256²: record, try the next size
            out[key] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    res: dict[str, Any] = {"status": "ok", "runs": out}
    if compile_backend:
        r = next(iter(out.values()))
        ratio = (r.get("ratios") or {}).get("gradprom-compiled/gradprom")
        res["compile_backend"] = compile_backend
        res["pays"] = None if ratio is None else ratio < 0.95
        # the first compiled variant to run pays the compilation (the others reuse E's compiled graph)
        firsts = [v for k, v in (r.get("first_call_ms") or {}).items() if k.endswith("-compiled")]
        res["compile_seconds"] = max(firsts) / 1e3 if firsts else math.nan
    if any("error" in r for r in out.values()):
        res["status"] = "partial"
    return res


# ---------------------------------------------------------------------------------------------------------
# ray
def stage_ray(plan: Plan, deadline: float, out: Path) -> dict[str, Any]:
    """`gradprom train --workers 1 --gpus-per-worker 1` on a small phantom set; rc, time and the run's status."""
    if importlib.util.find_spec("ray") is None:
        return {"status": "skipped", "reason": "ray not installed"}
    if not plan.ray:
        return {"status": "skipped", "reason": "dry run without --ray (starting Ray takes ~20 s on 2 cores)"}
    gpus = 1 if plan.device == "cuda" else 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "gradprom.cli", "train", "--workers", "1", "--gpus-per-worker", str(gpus),
               "--device", plan.device, "--epochs", "1", "--max-steps-per-epoch", "20", "--out", tmp,
               "--name", "ray-gpu", "--set", "data.image_size=64", "--set", "data.num_train=256",
               "--set", "data.num_val=32", "--set", "data.num_test=32"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.monotonic()
        rc, log = run_until(cmd, env, deadline)
        run_json = Path(tmp) / "ray-gpu" / "run.json"
        run = json.loads(run_json.read_text()) if run_json.is_file() else {}
    (out / "ray.log").write_text(log)
    return {"status": "ok" if rc == 0 and run.get("status") == "finished" else "failed", "returncode": rc,
            "seconds": time.monotonic() - t0, "run_status": run.get("status"), "run_device": run.get("device"),
            "command": " ".join(["gradprom", *cmd[3:]]).replace(tmp, "<tmp>"), "log_tail": log[-2000:]}


# ---------------------------------------------------------------------------------------------------------
# cell
def stage_cell(plan: Plan, deadline: float) -> dict[str, Any]:
    """Per task: ms per training step of the preset's gradprom cell (data loading included, as the loop runs
    it) and the time of one validation pass; extrapolated to the preset's grid, cells one after another."""
    from gradprom.experiments.grid import PRESETS, GridSpec
    from gradprom.platform.step import TrainStep

    device = torch.device(plan.device)
    p = PRESETS[plan.preset]
    cells = GridSpec(preset=plan.preset).cells()
    steps_per_epoch = math.ceil(p.num_train / p.batch_size)
    out: dict[str, Any] = {"preset": plan.preset, "grid_cells": len(cells), "steps_per_epoch": steps_per_epoch,
                           "epochs": p.epochs, "tasks": {}}
    tasks = sorted({c.task for c in cells})
    for i, task in enumerate(tasks):
        task_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(tasks) - i)
        setup = cell_setup(plan.preset, task, device, num_train=min(p.num_train, 512))
        cfg = setup["cfg"]
        m, _ = build_models(cfg, setup["info"], setup["deg"].scale, device)
        step = TrainStep.from_config(cfg, m.enhancer, m.recognizer, m.opt_e, m.opt_r, device=device)
        times = []
        it = epoch_batches(setup["datasets"]["train"], cfg, device, plan.cell_warmup + plan.cell_steps)
        t = time.perf_counter()
        for j, batch in enumerate(it):  # the loader's time counts: the loop pays it too
            step(*batch)  # returns floats: one host sync per step, as in the loop
            now = time.perf_counter()
            if j >= plan.cell_warmup:
                times.append(now - t)
            t = now
            if time.monotonic() > task_deadline and len(times) >= 3:
                break
        t_val = time_eval(m, setup["datasets"]["val"], device)
        ms = statistics.median(times) * 1e3
        val_s = t_val * p.num_val / len(setup["datasets"]["val"])
        cell_s = p.epochs * (steps_per_epoch * ms / 1e3 + val_s) + val_s * p.num_test / p.num_val
        n_cells = sum(c.task == task for c in cells)
        out["tasks"][task] = {"cell": setup["cell"], "ms_per_step": ms, "steps_timed": len(times),
                              "val_pass_s": val_s, "cell_hours": cell_s / 3600, "cells": n_cells,
                              "grid_hours": n_cells * cell_s / 3600}
    out["grid_hours"] = sum(t["grid_hours"] for t in out["tasks"].values())
    out["note"] = ("every cell costed as its task's gradprom cell (output-space and enhance_only cells are cheaper); "
                   "the frozen judges (one recognizer per task, frozen_epochs epochs) and per-image evaluation "
                   "are not included")
    out["status"] = "ok"
    return out


@torch.no_grad()
def time_eval(m, ds, device: torch.device) -> float:
    """Seconds for one pass of E and R over a split under the loop's autocast (metrics excluded)."""
    from torch.utils.data import DataLoader

    m.enhancer.eval(), m.recognizer.eval()
    sync(device)
    t = time.perf_counter()
    for b in DataLoader(ds, batch_size=64):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            m.recognizer(m.enhancer(b["x_lq"].to(device)))
    sync(device)
    m.enhancer.train(), m.recognizer.train()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------------------
# driver
def default_out(dry: bool, parent: Path | None = None) -> Path:
    """<parent>/<date>-<gpu name>, parent docs/gpu by default (runs/ for a dry run)."""
    if dry or not torch.cuda.is_available():
        return (parent or ROOT / "runs") / "gpu-check-dry"
    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return (parent or ROOT / "docs" / "gpu") / f"{datetime.now(UTC):%Y-%m-%d}-{name}"


def run_stage(results: dict, name: str, fn: Callable[[float], dict[str, Any]], cap: float, out: Path) -> None:
    """Run one stage under its cap; an exception becomes the stage's recorded error. Files are rewritten after
    every stage, so a run killed later still leaves what it measured."""
    t0 = time.monotonic()
    print(f"[gpu_check] {name} (cap {cap:.0f} s) ...", flush=True)
    try:
        r = fn(t0 + cap)
    except Exception as e:  # noqa: BLE001 - one broken stage must not cost the others
        r = {"status": "error", "error": f"{type(e).__name__}: {e}"[:1000], "traceback": traceback.format_exc()[-3000:]}
    r["seconds"] = time.monotonic() - t0
    results["stages"][name] = r
    print(f"[gpu_check] {name}: {r.get('status')} in {r['seconds']:.1f} s", flush=True)
    write_results(results, out)


def write_results(results: dict, out: Path) -> None:
    """results.json and summary.md, each replaced atomically. Not gradprom.platform.atomic: importing the
    engine package imports pydantic, and a machine where that is broken must still get its results written."""
    for name, text in (("results.json", json.dumps(results, indent=2, default=str) + "\n"),
                       ("summary.md", summary(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _f(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def summary(results: dict) -> str:
    """The figures of results.json as a short markdown page."""
    st, env = results["stages"], results["stages"].get("env", {})
    gpu = (env.get("gpu") or {}).get("name", "no GPU")
    lines = [f"# GPU check: {gpu}", "", f"{results['started']} · `{results['command']}` · "
             f"torch {env.get('torch')} · CUDA {env.get('cuda')} · python {env.get('python')}"
             + (" · **dry run (CPU, tiny sizes: no GPU figures)**" if results["dry_run"] else ""), ""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v.get('status')} | {_f(v.get('seconds'), '.1f')} |" for k, v in st.items()]
    if env.get("missing"):
        lines += ["", f"Modules not importable: {', '.join(env['missing'])}."]
    t = st.get("tests", {})
    if "counts" in t:
        c = t["counts"]
        lines += ["", f"## Unit tests on {t['device']}", "", f"{c['passed']} passed, {c['failures']} failed, "
                  f"{c['errors']} errors, {c['skipped']} skipped (`{t['command']}`)."]
        lines += [f"- FAILED `{f['test']}`: {f['message'][:200]}" for f in t.get("failed", [])[:10]]
    b = st.get("bf16", {})
    if "same_weights" in b:
        sw, tr = b["same_weights"], b["trajectories"]
        lines += ["", f"## bf16 vs fp32 ({b['cell']}, {b['image_size']}², batch {b['batch']}, {tr['steps']} steps)", "",
                  "| | identical gate decisions | mean abs Δcos | final PSNR fp32 / bf16 (dB) |", "|---|---|---|---|",
                  f"| same weights and batches (numerics alone) | {_f(sw['identical_gate_share'])} | "
                  f"{_f(sw['mean_abs_dcos'], '.2e')} | |",
                  *[f"| same weights, only the {who} in bf16 | {_f(sw[key]['identical_gate_share'])} | "
                    f"{_f(sw[key]['mean_abs_dcos'], '.2e')} | |"
                    for key, who in (("enhancer_only", "enhancer"), ("recognizer_only", "recognizer"))],
                  f"| two trajectories from one seed | {_f(tr['identical_gate_share'])} | "
                  f"{_f(tr['mean_abs_dcos'], '.2e')} | "
                  f"{_f(tr['final_psnr']['fp32'], '.2f')} / {_f(tr['final_psnr']['bf16'], '.2f')} |", "",
                  f"dtypes under autocast: {b['dtypes_under_autocast']}. Verdict: {b['verdict']}."]
    for stage in ("step", "compile"):
        s = st.get(stage, {})
        for key, r in (s.get("runs") or {}).items():
            if "ms" not in r:
                lines += ["", f"## {stage} {key}: {r.get('error')}"]
                continue
            lines += ["", f"## {'Step' if stage == 'step' else 'torch.compile(E)'} at {r['size']}², batch {r['batch']} "
                      f"({r['precision']}, enhancer {r['enhancer_channels']}, {r['enhancer_params']:,} params, "
                      f"median of {r['repeats']})", "", "| variant | ms/step | peak MiB |", "|---|---|---|"]
            mem = r.get("peak_mem_mib") or {}
            lines += [f"| {k} | {v:.2f} | {_f(mem.get(k), '.0f')} |" for k, v in r["ms"].items()]
            lines += ["", " · ".join(f"{k} {_f(v)}" for k, v in r["ratios"].items() if v is not None)]
            lines += [f"- {k} failed: {e}" for k, e in r.get("errors", {}).items()]
        if stage == "compile" and "pays" in s:
            lines += ["", f"torch.compile ({s['compile_backend']}): first call {_f(s['compile_seconds'], '.2f')} s; "
                      f"pays: {s['pays']}."]
    r = st.get("ray", {})
    lines += ["", f"## Ray Train, one GPU worker: {r.get('status')}"
              + (f" ({r.get('reason') or r.get('error') or r.get('run_status')})" if r else "")]
    c = st.get("cell", {})
    if "tasks" in c:
        lines += ["", f"## One `{c['preset']}` cell, extrapolated ({c['grid_cells']} cells, {c['epochs']} epochs × "
                  f"{c['steps_per_epoch']} steps)", "", "| task | ms/step | val pass s | hours/cell | cells | hours |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['ms_per_step']:.1f} | {v['val_pass_s']:.2f} | {v['cell_hours']:.3f} | {v['cells']} | "
                  f"{v['grid_hours']:.2f} |" for k, v in c["tasks"].items()]
        lines += ["", f"Whole grid on this device: about {c['grid_hours']:.1f} h ({c['note']})."]
    for k, v in st.items():
        if v.get("status") == "error":
            lines += ["", f"**{k} failed**: `{v['error'][:300]}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="results folder (default docs/gpu/<date>-<gpu>, runs/gpu-check-dry "
                                             "for a dry run)")
    ap.add_argument("--out-parent", type=Path, help="results folder <DIR>/<date>-<gpu> (default DIR docs/gpu)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, every stage (CI runs this)")
    ap.add_argument("--stages", default="env,tests,bf16,step,compile,ray,cell", help="comma-separated subset")
    ap.add_argument("--ray", action="store_true", help="dry run: run the Ray stage too")
    ap.add_argument("--bf16-steps", type=int, help="steps of the bf16 comparison (default 200)")
    ap.add_argument("--bf16-batch", type=int, help="batch of the bf16 comparison (default: the preset's)")
    ap.add_argument("--cell-steps", type=int, help="timed steps of the paper cell (default 300)")
    ap.add_argument("--cap", action="append", default=[], metavar="STAGE=SECONDS", help="a stage's time cap")
    args = ap.parse_args(argv)
    base = DRY if args.dry_run else FULL
    plan = dataclasses.replace(base, caps=dict(base.caps))  # the flags below must not change the presets
    if args.ray:
        plan.ray = True
    if args.bf16_steps:
        plan.bf16_steps = args.bf16_steps
    if args.cell_steps:
        plan.cell_steps = args.cell_steps
    if args.bf16_batch:
        plan.bf16_batch = args.bf16_batch
    for c in args.cap:
        name, _, sec = c.partition("=")
        try:
            plan.caps[name] = float(sec)
        except ValueError:
            print(f"gradprom: error: --cap {c!r}: expected STAGE=SECONDS, e.g. --cap bf16=120.", file=sys.stderr)
            return 2
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gradprom: error: benchmarks/gpu_check.py: no CUDA device is available here; run it on a GPU "
              "machine, or pass --dry-run to exercise every stage on the CPU.", file=sys.stderr)
        return 2
    results = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "dry_run": args.dry_run,
               "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "plan": {k: v for k, v in vars(plan).items()}, "stages": {}}
    stages: dict[str, Callable[[float], dict[str, Any]]] = {
        "env": lambda d: {"status": "ok", **stage_env(plan, d)},
        "tests": lambda d: stage_tests(plan, d, out),
        "bf16": lambda d: stage_bf16(plan, d),
        "step": lambda d: stage_step(plan, d),
        "compile": lambda d: stage_step(plan, d, compile_backend=plan.compile_backend),
        "ray": lambda d: stage_ray(plan, d, out),
        "cell": lambda d: stage_cell(plan, d),
    }
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in wanted if s not in stages]
    if bad:
        print(f"gradprom: error: --stages: unknown {bad}; choose from {', '.join(stages)}.", file=sys.stderr)
        return 2
    out = args.out or default_out(args.dry_run, args.out_parent)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for name in wanted:
        run_stage(results, name, stages[name], plan.caps.get(name, 30.0), out)
    results["total_seconds"] = time.monotonic() - t0
    write_results(results, out)
    print(f"[gpu_check] done in {results['total_seconds']:.0f} s: {out / 'results.json'}, {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
