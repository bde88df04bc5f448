"""The report: Markdown + PNG figures from results.parquet and the cells' tables, conclusions from the numbers.

Conclusions are written by rules, not by hand, so they say what this run's numbers support: a difference is
called significant only at p < 0.05 (Wilcoxon signed-rank over paired test images), and "keeps image
quality" means GradProm's PSNR is not significantly below enhance-only's or is within 0.1 dB of it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from gradprom.platform.atomic import atomic_write_text  # noqa: E402
from gradprom.platform.build import resolve_device  # noqa: E402
from gradprom.platform.config import build_config  # noqa: E402
from gradprom.platform.data.sources import build_datasets  # noqa: E402
from gradprom.platform.evaluate import load_trained_models
from gradprom.platform.figures import save_figure  # noqa: E402
from gradprom.platform.rundir import RunDir, versions  # noqa: E402
from gradprom.platform.strategies import STRATEGY_PRESETS  # noqa: E402

from .grid import BASELINES, GRADPROM, PRESETS, GridSpec  # noqa: E402
from .stats import paired  # noqa: E402

QUALITY_MARGIN_DB = 0.1  # PSNR differences smaller than this are not a loss or a conflict worth the name
TASK_MARGIN = 0.01  # accuracy / Dice differences smaller than this are negligible, however small p is
REFERENCES = ("degraded input", "clean")


def _ms(values: list[float], fmt: str) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "–"
    if v.size == 1:
        return format(v[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt.replace('+', ''))}"


def _p(p: float) -> str:
    return "–" if p is None or not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _select(rows: list[dict], **kw: Any) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def write_report(out: Path, spec: GridSpec, rows: list[dict[str, Any]], command: str = "") -> Path:
    """Write out/report/report.md and its figures; return the Markdown path."""
    rdir = out / "report"
    figs = rdir / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    seeds = sorted({r["seed"] for r in rows})
    p = PRESETS[spec.preset]
    lines = ["# GradProm evidence report", "",
             f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} "
             f"by `{command or 'gradprom experiment'}`.", "",
             f"- Preset **{spec.preset}**: images {p.image_size}² (phantoms), {p.num_train} train / {p.num_test} test "
             f"images, {p.epochs} epochs, batch {p.batch_size}, U-Net enhancer {list(p.enhancer_channels)}, "
             f"seeds {seeds}."
             if spec.data == "phantoms" else f"- Preset **{spec.preset}**, data `{spec.data}`, seeds {seeds}.",
             f"- Loss weights, the same for every strategy of a cell: λ_e = 1, λ_r = "
             f"{', '.join(f'{v:g} ({k})' for k, v in p.lambda_r if k in spec.tasks)}.",
             f"- Strategies: {', '.join(spec.strategies)}. Tasks: {', '.join(spec.tasks)}. "
             f"Degradations: {', '.join(spec.degradations)}.",
             "- Task scores: accuracy (classification) or Dice (segmentation) on enhanced test images, judged "
             "(a) by the recognizer trained jointly in that cell and (b) by one independent recognizer trained on "
             "clean images and frozen. *degraded input* and *clean* rows pass the input and the clean images "
             "through that frozen recognizer.",
             "- Paired tests: per test image, GradProm minus the baseline, pooled over seeds, Wilcoxon signed-rank "
             "(two-sided). Per-seed mean differences are listed so a result carried by one seed shows.",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.", ""]

    conclusions: list[str] = []
    conflict_rows = []
    for task in spec.tasks:
        metric = "accuracy" if task == "classification" else "Dice"
        for deg in spec.degradations:
            sub = _select(rows, task=task, degradation=deg)
            if not sub:
                continue
            lines += [f"## {task} · {deg}", "",
                      f"| strategy | PSNR (dB) | SSIM | {metric} (joint R) | {metric} (frozen R) | "
                      f"gate-open rate | mean cos |",
                      "|---|---|---|---|---|---|---|"]
            for name in (*REFERENCES, *spec.strategies):
                rs = _select(sub, strategy=name)
                if not rs:
                    continue
                lines.append(f"| {name} | {_ms([r['psnr'] for r in rs], '.2f')} | "
                             f"{_ms([r['ssim'] for r in rs], '.3f')} | "
                             f"{_ms([r.get('task_joint') for r in rs], '.3f')} | "
                             f"{_ms([r['task_frozen'] for r in rs], '.3f')} | "
                             f"{_ms([r.get('gate_open_rate') for r in rs], '.2f')} | "
                             f"{_ms([r.get('mean_cos') for r in rs], '+.3f')} |")
            lines.append("")
            tests = {}
            if GRADPROM in spec.strategies:
                lines += [f"Paired tests, {GRADPROM} minus baseline (n = test images × seeds):", "",
                          f"| baseline | Δ PSNR (dB) | p | Δ SSIM | p | Δ {metric} (frozen R) | p | Δ PSNR per seed |",
                          "|---|---|---|---|---|---|---|---|"]
                for base in [b for b in (*BASELINES, *STRATEGY_PRESETS) if b in spec.strategies]:
                    t = {m: paired(runs, task, deg, GRADPROM, base, seeds, m) for m in ("psnr", "ssim", "task_frozen")}
                    tests[base] = t
                    lines.append(f"| {base} | {t['psnr']['mean_diff']:+.3f} | {_p(t['psnr']['p'])} | "
                                 f"{t['ssim']['mean_diff']:+.4f} | {_p(t['ssim']['p'])} | "
                                 f"{t['task_frozen']['mean_diff']:+.3f} | {_p(t['task_frozen']['p'])} | "
                                 f"{', '.join(f'{x:+.2f}' for x in t['psnr']['per_seed'])} |")
                lines.append("")
            # the conflict the phantoms must carry: joint vs enhance-only, and negative cosines
            c = _conflict(runs, sub, task, deg, seeds)
            conflict_rows.append(c)
            gate_png = _gate_figure(figs, runs, spec, task, deg, seeds[0])
            sample_png = _samples_figure(figs, runs, spec, task, deg, seeds[0])
            lines += [f"![gate behaviour]({gate_png.relative_to(rdir)})", "",
                      f"![samples]({sample_png.relative_to(rdir)})", ""]
            conclusions += _conclude(task, deg, metric, tests, c)

    lines += ["## Does the data carry a conflict?", "",
                          "Joint training must cost image quality against enhance-only, and the two gradients must "
                          "disagree on a substantial share of steps, or there is nothing for a gate to do.", "",
                          "| task | degradation | joint − enhance_only PSNR (dB) | p | steps with cos(g_e, g_r) < 0 |",
                          "|---|---|---|---|---|"]
    for c in conflict_rows:
        d = ("– (needs joint and enhance_only)" if not np.isfinite(c["joint_minus_eo"])
             else f"{c['joint_minus_eo']:+.3f}")
        share = "–" if not np.isfinite(c["neg_share"]) else f"{c['neg_share']:.0%}"
        lines.append(f"| {c['task']} | {c['degradation']} | {d} | {_p(c['p'])} | {share} |")
    lines += ["", "## Conclusions", "", *[f"- {s}" for s in conclusions], ""]
    md = rdir / "report.md"
    atomic_write_text(md, "\n".join(lines))
    return md


def _conflict(runs: Path, sub: list[dict], task: str, deg: str, seeds: list[int]) -> dict:
    t = paired(runs, task, deg, "joint", "enhance_only", seeds, "psnr")
    shares = [r["neg_cos_share"] for r in sub if r.get("strategy") in ("gradprom", "enhance_only", "joint")
              and r.get("neg_cos_share") is not None and np.isfinite(r["neg_cos_share"])]
    return {"task": task, "degradation": deg, "joint_minus_eo": t["mean_diff"], "p": t["p"],
            "neg_share": float(np.mean(shares)) if shares else math.nan}


def _conclude(task: str, deg: str, metric: str, tests: dict, conflict: dict) -> list[str]:
    out = []
    where = f"**{task} · {deg}**"
    d = conflict["joint_minus_eo"]
    if np.isfinite(d):
        if d < -QUALITY_MARGIN_DB and conflict["p"] < 0.05:
            out.append(f"{where}: joint training lowers PSNR by {-d:.2f} dB against enhance-only "
                       f"(p {_p(conflict['p'])}); cos(g_e, g_r) < 0 on {conflict['neg_share']:.0%} of steps: "
                       f"the task does pull against quality here.")
        else:
            out.append(f"{where}: joint training does not lower PSNR by more than {QUALITY_MARGIN_DB} dB against "
                       f"enhance-only (Δ {d:+.2f} dB, p {_p(conflict['p'])}), although cos(g_e, g_r) < 0 on "
                       f"{conflict['neg_share']:.0%} of steps: there is little quality conflict for a gate to "
                       f"resolve here.")
    eo = tests.get("enhance_only")
    if eo:
        dq, pq_ = eo["psnr"]["mean_diff"], eo["psnr"]["p"]
        keeps = dq >= -QUALITY_MARGIN_DB or pq_ >= 0.05
        out.append(f"{where}: GradProm's PSNR is {dq:+.2f} dB against enhance-only (p {_p(pq_)}): it "
                   f"{'keeps' if keeps else 'does not keep'} enhance-only's image quality.")
        dt, pt = eo["task_frozen"]["mean_diff"], eo["task_frozen"]["p"]
        if pt >= 0.05:
            verdict = "makes no significant difference to the task"
        elif abs(dt) < TASK_MARGIN:
            verdict = "makes a negligible difference to the task"
        else:
            verdict = "helps the task" if dt > 0 else "hurts the task"
        out.append(f"{where}: judged by the frozen clean recognizer, GradProm {verdict} against enhance-only "
                   f"(Δ {metric} {dt:+.3f}, p {_p(pt)}).")
    jt = tests.get("joint")
    if jt:
        dq, pq_ = jt["psnr"]["mean_diff"], jt["psnr"]["p"]
        word = "higher" if dq > 0 else "lower"
        sig = "significantly " if pq_ < 0.05 else "not significantly "
        out.append(f"{where}: against joint training, GradProm's PSNR is {sig}{word} ({dq:+.2f} dB, p {_p(pq_)}).")
    return out


def _gate_figure(figs: Path, runs: Path, spec: GridSpec, task: str, deg: str, seed: int) -> Path:
    """Rolling gate-open rate and cosine over training steps, for the gating strategies of one seed."""
    path = figs / f"gate-{task}-{deg}.png"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for s in spec.strategies:
        t = RunDir(runs / f"{task}-{deg}-{s}-s{seed}").read_steps()
        if t is None:
            continue
        step = np.asarray(t["step"].to_pylist())
        for ax, col in zip(axes, ("cos", "gate_open")):
            v = np.asarray(t[col].to_pylist(), dtype=float)
            if not np.isfinite(v).any():
                continue
            w = max(1, min(10, len(v) // 5))
            smooth = np.convolve(np.nan_to_num(v), np.ones(w) / w, mode="valid")
            ax.plot(step[w - 1:], smooth, label=s, lw=1.2)
    axes[0].axhline(0.0, color="k", lw=0.6, ls="--")
    axes[0].set_title("cos(g_e, g_r), rolling mean", fontsize=9)
    axes[1].set_title("gate open (1) / closed (0), rolling mean", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{task} · {deg} · seed {seed}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


@torch.no_grad()
def _samples_figure(figs: Path, runs: Path, spec: GridSpec, task: str, deg: str, seed: int, n: int = 4) -> Path:
    """Rows: degraded, each strategy's enhanced image, clean; columns: the first n test images."""
    path = figs / f"samples-{task}-{deg}.png"
    device = resolve_device("cpu")
    names = [s for s in spec.strategies if (runs / f"{task}-{deg}-{s}-s{seed}" / "checkpoints" / "latest.pt").is_file()]
    first = runs / f"{task}-{deg}-{names[0]}-s{seed}" if names else None
    if first is None:
        return path
    from gradprom.platform.config import load_config_file

    cfg = build_config(load_config_file(first / "config.yaml"), source=str(first))
    datasets, info, degradation = build_datasets(cfg)
    batch = next(iter(DataLoader(datasets["test"], batch_size=n, shuffle=False)))
    x_lq, x_hq = batch["x_lq"], batch["x_hq"]
    x_in = x_lq if x_lq.shape == x_hq.shape else torch.nn.functional.interpolate(x_lq, size=x_hq.shape[-2:])
    rows = [("degraded", x_in)]
    for s in names:
        d = runs / f"{task}-{deg}-{s}-s{seed}"
        c = build_config(load_config_file(d / "config.yaml"), source=str(d))
        m = load_trained_models(c, info, degradation.scale, RunDir(d).latest_checkpoint(), device)
        rows.append((s, m.enhancer.eval()(x_lq)))
    rows.append(("clean", x_hq))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.6 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(n):
            img = imgs[j].clamp(0, 1).numpy()
            axes[i, j].imshow(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1), cmap="gray", vmin=0, vmax=1,
                              interpolation="nearest")
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"{task} · {deg} · seed {seed}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path
