"""The report: Markdown + PNG figures from results.parquet and the cells' tables, conclusions from the numbers.

The unit of replication is the training run (seed): every comparison is made on per-seed mean differences
of paired test images (seedstats.py). Conclusions are written by rules that say only what the numbers show:
  - the **premise** of each task × degradation is checked first (premise.py); where it fails, the report
    says that setting cannot show a strategy helping the task and draws no task conclusion from it;
  - "keeps image quality" is **non-inferiority**: the one-sided 95% upper bound of the PSNR loss against
    enhance_only lies below 0.1 dB (a non-significant loss is not enough);
  - a PSNR difference is called a difference only beyond 0.1 dB with BH-adjusted q < 0.05; a task difference
    only beyond the task margin max(10% of the judge's headroom, 2 SE) with q < 0.05 and a CI excluding 0;
  - every strategy is compared with enhance_only, and each GradProm variant with the best baseline;
  - the conflict diagnostic is measured along the enhance_only path only (joint's own path is a tug of war).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.rundir import versions

from . import premise as prem
from . import report_figures as rf
from . import seedstats as ss
from .cells import read_per_image
from .grid import BASELINES, PRESETS, GridSpec

QUALITY_MARGIN_DB = ss.QUALITY_MARGIN_DB
REFERENCES = ("degraded input", "clean")
ALPHA = 0.05
COS_NEGLIGIBLE = 0.05  # |mean cos| below this is what near-orthogonal (uninformative) gradients give


def _ms(values: list[float], fmt: str) -> str:
    """'mean ± seed SD' (one value: the value)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "–"
    if v.size == 1:
        return format(v[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt.replace('+', ''))}"


def _p(p: float) -> str:
    return "–" if p is None or not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _f(x: float, fmt: str) -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, fmt)


def _select(rows: list[dict], **kw: Any) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def _per_seed(runs: Path, task: str, deg: str, a: str, b: str, seeds: list[int], metric: str):
    """Per-image arrays of a and b for the seeds where both cells were evaluated on the same images."""
    xa, xb = [], []
    for seed in seeds:
        da, db = runs / f"{task}-{deg}-{a}-s{seed}", runs / f"{task}-{deg}-{b}-s{seed}"
        if not (da / "per_image.parquet").is_file() or not (db / "per_image.parquet").is_file():
            continue
        ra, rb = read_per_image(da), read_per_image(db)
        if not np.array_equal(ra["index"], rb["index"]):
            raise ValueError(f"{da} and {db} were evaluated on different test images")
        if metric not in ra or metric not in rb:
            continue
        xa.append(ra[metric]), xb.append(rb[metric])
    return xa, xb


def _comparisons(runs: Path, sub: list[dict], task: str, deg: str, strategies: list[str], seeds: list[int],
                 tkey: str, margin: float) -> list[dict]:
    """Every strategy vs enhance_only (PSNR, task), each non-baseline vs the best baseline (PSNR, task)."""
    def mean_of(name: str, key: str) -> float:
        v = [r[key] for r in _select(sub, strategy=name) if r.get(key) is not None and np.isfinite(r[key])]
        return float(np.mean(v)) if v else -math.inf

    pairs: list[tuple[str, str, str, str]] = []  # (a, b, metric, why)
    if "enhance_only" in strategies:
        for s in strategies:
            if s != "enhance_only":
                pairs += [(s, "enhance_only", "psnr", "vs enhance_only"), (s, "enhance_only", tkey, "vs enhance_only")]
    bases = [b for b in BASELINES if b in strategies]
    for s in [s for s in strategies if s not in BASELINES]:
        for metric in ("psnr", tkey):
            best = max(bases, key=lambda b: mean_of(b, metric), default=None)
            if best and best != "enhance_only":
                pairs.append((s, best, metric, f"vs best baseline on {'PSNR' if metric == 'psnr' else 'task'}"))
    out = []
    for a, b, metric, why in pairs:
        xa, xb = _per_seed(runs, task, deg, a, b, seeds, metric)
        if not xa:
            continue
        c = ss.compare(xa, xb)
        c.update(a=a, b=b, metric=metric, why=why, task=task, degradation=deg)
        if metric == "psnr":
            c["non_inferior"], c["loss_upper"] = ss.non_inferior(c["per_seed"])
        c["margin"] = QUALITY_MARGIN_DB if metric == "psnr" else margin
        out.append(c)
    return out


def _verdict(c: dict, task_ok: bool) -> str:
    """What one comparison shows, by the rules of the module docstring."""
    sig = np.isfinite(c.get("q", math.nan)) and c["q"] < ALPHA
    if c["metric"] == "psnr":
        if sig and c["mean"] > QUALITY_MARGIN_DB and c["ci_lo"] > 0:
            return "higher PSNR"
        if sig and c["mean"] < -QUALITY_MARGIN_DB and c["ci_hi"] < 0:
            return "lower PSNR"
        if c["b"] == "enhance_only":
            return "non-inferior" if c["non_inferior"] else "not shown non-inferior"
        return "no PSNR difference shown"
    if not task_ok:
        return "no task conclusion (premise fails)"
    if not np.isfinite(c["margin"]):
        return "no task conclusion (no margin)"
    if sig and c["mean"] > c["margin"] and c["ci_lo"] > 0:
        return "helps the task"
    if sig and c["mean"] < -c["margin"] and c["ci_hi"] < 0:
        return "hurts the task"
    return "no task difference shown"


def _conflict(sub: list[dict], runs: Path, task: str, deg: str, seeds: list[int]) -> dict:
    """Along the enhance_only path only: the share of steps with cos < 0 and the mean cosine (audit D3)."""
    eo = _select(sub, strategy="enhance_only")
    share = [r["neg_cos_share"] for r in eo if r.get("neg_cos_share") is not None and np.isfinite(r["neg_cos_share"])]
    cos = [r["mean_cos"] for r in eo if r.get("mean_cos") is not None and np.isfinite(r["mean_cos"])]
    xa, xb = _per_seed(runs, task, deg, "joint", "enhance_only", seeds, "psnr")
    jc = ss.compare(xa, xb) if xa else None
    return {"task": task, "degradation": deg, "neg_share": float(np.mean(share)) if share else math.nan,
            "mean_cos": float(np.mean(cos)) if cos else math.nan, "joint": jc}


def _conflict_sentence(where: str, c: dict) -> str:
    parts = []
    j = c["joint"]
    if j is not None:
        if j["ci_hi"] < -QUALITY_MARGIN_DB:
            parts.append(f"joint training lowers PSNR against enhance_only by {-j['mean']:.2f} dB (95% CI "
                         f"{j['ci_lo']:+.2f}..{j['ci_hi']:+.2f}, entirely below −{QUALITY_MARGIN_DB} dB)")
        else:
            parts.append(f"joint training is not shown to lower PSNR by more than {QUALITY_MARGIN_DB} dB against "
                         f"enhance_only (Δ {j['mean']:+.2f} dB, 95% CI {j['ci_lo']:+.2f}..{j['ci_hi']:+.2f})")
    if np.isfinite(c["neg_share"]):
        mc = c["mean_cos"]
        reading = ("the task gradient tends to pull against quality" if mc <= -COS_NEGLIGIBLE else
                   "the two gradients mostly agree" if mc >= COS_NEGLIGIBLE else
                   f"the gradients are near-orthogonal (|mean cos| < {COS_NEGLIGIBLE}), so the data do not show "
                   f"the task pulling against quality")
        parts.append(f"along the enhance_only path cos(g_e, g_r) < 0 on {c['neg_share']:.0%} of steps (mean cos "
                     f"{mc:+.3f}): {reading}")
    return f"{where}: " + "; ".join(parts) + "." if parts else ""


def write_report(out: Path, spec: GridSpec, rows: list[dict[str, Any]], command: str = "") -> Path:
    """Write out/report/report.md and its figures; return the Markdown path."""
    rdir = out / "report"
    figs = rdir / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    seeds = sorted({int(r["seed"]) for r in rows})
    p = PRESETS[spec.preset]
    weights = ", ".join(f"{spec.task_weight(t):.3g} ({t})" for t in spec.tasks)
    rule = (f"set by the pilot rule (median ‖g_r‖/‖g_e‖ = {p.lambda_r_target_ratio} on the training split, "
            f"pilot.json)" if p.lambda_r_target_ratio is not None and spec.lambda_r else "fixed by the preset")
    data_line = (f"- Preset **{spec.preset}**: phantoms v{p.phantom_version} (texture contrast {p.texture_contrast}), "
                 f"{p.image_size}², {p.num_train} train / {p.num_test} test images, {p.epochs} epochs, batch "
                 f"{p.batch_size}, U-Net enhancer {list(p.enhancer_channels)}, seeds {seeds}."
                 if spec.data == "phantoms" else f"- Preset **{spec.preset}**, data `{spec.data}`, seeds {seeds}.")
    lines = ["# GradProm evidence report", "",
             f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} by "
             f"`{command or 'gradprom experiment'}`.", "",
             data_line,
             f"- Loss weights, the same for every strategy of a cell: λ_e = 1, λ_r = {weights}, {rule}.",
             f"- Recognizer R of the cells: {p.recognizer_norm} norm; "
             + (f"warm-started from a recognizer trained {p.warm_start_epochs} epochs on clean images, then "
                f"fine-tuned jointly." if p.warm_start_epochs else "trained jointly from scratch."),
             f"- Strategies: {', '.join(spec.strategies)}. Tasks: {', '.join(spec.tasks)}. "
             f"Degradations: {', '.join(spec.degradations)}.",
             "- The **judge** is an independent recognizer (another seed, and for classification another "
             "architecture, DenseNet) trained on clean images and frozen; every task score below is the judge's "
             "unless marked *joint R*.",
             f"- Statistics: the training run is the unit. **±** is the SD of per-seed means across seeds. Δ is the "
             f"mean of per-seed mean differences over paired test images; **95% CI**: hierarchical bootstrap (seeds, "
             f"then images within seed; {ss.N_BOOT} resamples, seeded); **p**: exact two-sided sign-flip test on "
             f"the per-seed differences (with {len(seeds)} seeds the smallest possible p is "
             f"{ss.min_sign_flip_p(len(seeds)):.3g}); **q**: Benjamini–Hochberg over all comparisons of this report. "
             f"*Non-inferior* (keeps quality): the one-sided 95% upper bound of the PSNR loss (Student t over "
             f"per-seed differences) is below {QUALITY_MARGIN_DB} dB. Task margin: max(10% of the judge's "
             f"headroom clean − degraded, 2 SE of the degraded score across seeds).",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.", ""]
    if spec.data != "phantoms":
        lines[-2:-1] = [lines[-2], "- On this dataset every seed sees the same test images: the seed is still the "
                        "unit of every test, and the image resampling within a seed is conditional on this test set."]

    settings = [(t, d) for t in spec.tasks for d in spec.degradations if _select(rows, task=t, degradation=d)]
    premises = {(t, d): prem.check(_select(rows, task=t, degradation=d), t) for t, d in settings}
    lines += ["## Premise: can this setting show a strategy helping the task?", "",
              "| task | degradation | judge score | clean | degraded input | enhance_only | judge classes "
              "(clean / degraded / enhance_only) | joint − enhance_only (judge) | task margin | premise |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (t, d), pr in premises.items():
        key = "accuracy" if pr["key"] == "task_frozen" and t == "classification" else \
            ("lesion Dice" if pr["key"] == "lesion_frozen" else "Dice")
        h = " / ".join(pr["hist"][n] or "–" for n in ("clean", "degraded input", "enhance_only"))
        lines.append(f"| {t} | {d} | {key} | {_f(pr['clean'], '.3f')} | {_f(pr['degraded'], '.3f')} | "
                     f"{_f(pr['enhance_only'], '.3f')} | {h} | {_f(pr['joint_gain'], '+.3f')} (lower bound "
                     f"{_f(pr['joint_gain_lower'], '+.3f')}) | {_f(pr['margin'], '.3f')} | "
                     f"{'holds' if pr['holds'] else 'fails'} |")
    lines += ["", *[f"- {prem.statement(f'**{t} · {d}**', pr)}" for (t, d), pr in premises.items()], ""]

    # all comparisons first, so the BH adjustment spans the whole report
    comps: dict[tuple[str, str], list[dict]] = {}
    for t, d in settings:
        pr = premises[(t, d)]
        comps[(t, d)] = _comparisons(runs, _select(rows, task=t, degradation=d), t, d, spec.strategies, seeds,
                                     pr["key"], pr["margin"])
    flat = [c for cs in comps.values() for c in cs]
    for c, q in zip(flat, ss.bh_qvalues([c["p"] for c in flat])):
        c["q"] = float(q)

    conclusions: list[str] = []
    conflicts = []
    scatter_panels = []
    for t, d in settings:
        sub = _select(rows, task=t, degradation=d)
        pr = premises[(t, d)]
        tname = "accuracy" if t == "classification" else "Dice"
        lines += [f"## {t} · {d}", "",
                  f"| strategy | PSNR (dB) | SSIM | {tname} (judge) |"
                  + (" lesion Dice (judge) |" if t == "segmentation" else "")
                  + f" {tname} (joint R) | gate-open rate | mean cos | median ‖g_r‖/‖g_e‖ |",
                  "|---|---|---|---|" + ("---|" if t == "segmentation" else "") + "---|---|---|---|"]
        for name in (*REFERENCES, *spec.strategies):
            rs = _select(sub, strategy=name)
            if not rs:
                continue
            col = (lambda k, fmt: _ms([r.get(k) for r in rs], fmt))  # noqa: B023
            lines.append(f"| {name} | {col('psnr', '.2f')} | {col('ssim', '.3f')} | {col('task_frozen', '.3f')} |"
                         + (f" {col('lesion_frozen', '.3f')} |" if t == "segmentation" else "")
                         + f" {col('task_joint', '.3f')} | {col('gate_open_rate', '.2f')} | {col('mean_cos', '+.3f')} |"
                         f" {col('norm_ratio_median', '.3g')} |")
        lines += ["", "± is the seed SD.", ""]
        if comps[(t, d)]:
            lines += ["| comparison | metric | Δ | 95% CI | p (sign flip) | q (BH) | Δ per seed | verdict |",
                      "|---|---|---|---|---|---|---|---|"]
            for c in comps[(t, d)]:
                fmt = "+.3f" if c["metric"] != "psnr" else "+.2f"
                m = "PSNR (dB)" if c["metric"] == "psnr" else ("lesion Dice" if c["metric"] == "lesion_frozen"
                                                                else tname)
                extra = f"; loss upper bound {c['loss_upper']:.2f} dB" if c["metric"] == "psnr" and \
                    c["b"] == "enhance_only" and np.isfinite(c["loss_upper"]) else ""
                c["verdict"] = _verdict(c, pr["holds"])
                lines.append(f"| {c['a']} − {c['b']} ({c['why']}) | {m} | {_f(c['mean'], fmt)} | "
                             f"{_f(c['ci_lo'], fmt)}..{_f(c['ci_hi'], fmt)} | {_p(c['p'])} | {_p(c['q'])} | "
                             f"{', '.join(_f(x, fmt) for x in c['per_seed'])} | {c['verdict']}{extra} |")
            lines.append("")
        conflicts.append(_conflict(sub, runs, t, d, seeds))
        strategies = [s for s in spec.strategies if _select(sub, strategy=s)]
        stem = f"{t}-{d}"
        fig_paths = [rf.gate_figure(figs / f"gate-{stem}.png", runs, strategies, t, d, seeds),
                     rf.learning_curves(figs / f"curves-{stem}.png", runs, strategies, t, d, seeds),
                     rf.samples_figure(figs / f"samples-{stem}.png", runs, strategies, t, d, seeds[0])]
        for f_ in fig_paths:
            if f_.is_file():
                lines += [f"![{f_.stem}]({f_.relative_to(rdir)})", ""]
        key = pr["key"]
        scatter_panels.append({"title": f"{t} · {d}", "ylabel": f"{'lesion Dice' if key == 'lesion_frozen' else tname}"
                               " (judge)",
                               "points": {s: ([r["psnr"] for r in _select(sub, strategy=s)],
                                              [r.get(key, math.nan) for r in _select(sub, strategy=s)])
                                          for s in strategies},
                               "refs": {n: pr["clean" if n == "clean" else "degraded"] for n in REFERENCES}})
        conclusions += [prem.statement(f"**{t} · {d}**", pr), *_conclude(f"**{t} · {d}**", pr, comps[(t, d)],
                                                                           conflicts[-1])]

    sc = rf.scatter_figure(figs / "scatter.png", scatter_panels)
    front = rf.pareto_figure(figs / "pareto.png", scatter_panels)
    lines += ["## PSNR against the task", "", f"![PSNR vs task]({sc.relative_to(rdir)})", "",
              *([f"![λ_r sweep, Pareto fronts]({front.relative_to(rdir)})", ""] if front else []),
              "## Does the data carry a conflict?", "",
              "Measured along the enhance_only path only: joint's own trajectory is a tug of war between the two "
              "losses and says nothing about the data.", "",
              "| task | degradation | joint − enhance_only PSNR (dB) | 95% CI | steps with cos < 0 (enhance_only) | "
              "mean cos (enhance_only) |", "|---|---|---|---|---|---|"]
    for c in conflicts:
        j = c["joint"]
        lines.append(f"| {c['task']} | {c['degradation']} | {_f(j['mean'] if j else math.nan, '+.2f')} | "
                     + (f"{j['ci_lo']:+.2f}..{j['ci_hi']:+.2f}" if j else "–")
                     + f" | {_f(c['neg_share'], '.0%')} | {_f(c['mean_cos'], '+.3f')} |")
    lines += ["", "## Conclusions", "", *[f"- {s}" for s in conclusions if s], ""]
    md = rdir / "report.md"
    atomic_write_text(md, "\n".join(lines))
    return md


def _conclude(where: str, pr: dict, comps: list[dict], conflict: dict) -> list[str]:
    """One sentence per finding of a setting; task findings only where the premise holds."""
    out = [_conflict_sentence(where, conflict)]
    for c in comps:
        v = c.get("verdict") or _verdict(c, pr["holds"])
        fmt = "+.2f" if c["metric"] == "psnr" else "+.3f"
        ci = f"95% CI {_f(c['ci_lo'], fmt)}..{_f(c['ci_hi'], fmt)}, p {_p(c['p'])}, q {_p(c['q'])}"
        if c["metric"] == "psnr" and c["b"] == "enhance_only":
            if v == "non-inferior":
                out.append(f"{where}: {c['a']} keeps enhance_only's image quality (non-inferior: PSNR loss at most "
                           f"{c['loss_upper']:.2f} dB at one-sided 95%, below {QUALITY_MARGIN_DB} dB; "
                           f"Δ {c['mean']:+.2f} dB).")
            elif v == "lower PSNR":
                out.append(f"{where}: {c['a']} costs image quality against enhance_only (Δ {c['mean']:+.2f} dB, {ci}).")
            else:
                ub = _f(c["loss_upper"], ".2f")
                out.append(f"{where}: {c['a']} is not shown to keep enhance_only's image quality (Δ "
                           f"{c['mean']:+.2f} dB; the one-sided 95% upper bound of the loss, {ub} dB, is not below "
                           f"{QUALITY_MARGIN_DB} dB).")
        elif c["metric"] == "psnr":
            word = {"higher PSNR": "has higher PSNR than", "lower PSNR": "has lower PSNR than"}.get(
                v, "shows no PSNR difference beyond 0.1 dB from")
            out.append(f"{where}: {c['a']} {word} {c['b']}, the best baseline on PSNR (Δ {c['mean']:+.2f} dB, {ci}).")
        elif pr["holds"]:
            verbs = {"helps the task": "helps the task against", "hurts the task": "hurts the task against",
                     "no task difference shown": "shows no task difference beyond the margin against"}
            out.append(f"{where}: judged independently, {c['a']} {verbs.get(v, v)} {c['b']} (Δ {c['mean']:+.3f}, "
                       f"{ci}; margin {c['margin']:.3f}).")
    return out
