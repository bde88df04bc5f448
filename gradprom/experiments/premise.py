"""The premise of task-driven enhancement, checked per task × degradation before any task conclusion.

A setting can show a strategy helping the task only if (1) the independent judge reads the class on clean
images (score >= CLEAN_MIN), (2) degradation costs it more than the task margin (headroom), and (3) joint
training, the most task-driven baseline, raises the judge's score over enhance_only by more than the margin,
with its one-sided 95% lower bound (Student t over per-seed differences) above zero. When one fails, the
report says so and draws no task conclusion from that setting. Everything here works on the results rows
alone (one row per cell, plus the 'clean' and 'degraded input' reference rows), so a test can build them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import seedstats as ss

CLEAN_MIN = 0.9  # the judge must read the class (or the lesion) on clean images at least this well


def judge_key(task: str, rows: list[dict]) -> str:
    """The judge's score the premise uses: accuracy, or lesion Dice for segmentation when it was measured."""
    if task == "segmentation" and any(r.get("lesion_frozen") is not None for r in rows):
        return "lesion_frozen"
    return "task_frozen"


def by_seed(rows: list[dict], strategy: str, key: str) -> dict[int, float]:
    """{seed: value} of one strategy's (or reference's) rows, finite values only."""
    out = {}
    for r in rows:
        v = r.get(key)
        if r.get("strategy") == strategy and v is not None and np.isfinite(v):
            out[int(r["seed"])] = float(v)
    return out


def _mean(d: dict[int, float]) -> float:
    return float(np.mean(list(d.values()))) if d else math.nan


def check(rows: list[dict], task: str) -> dict[str, Any]:
    """The premise of one (task, degradation): its numbers, the three checks and the reasons it fails."""
    key = judge_key(task, rows)
    clean, deg = by_seed(rows, "clean", key), by_seed(rows, "degraded input", key)
    eo, joint = by_seed(rows, "enhance_only", key), by_seed(rows, "joint", key)
    c, d = _mean(clean), _mean(deg)
    se = ss.standard_error([np.array([v]) for v in deg.values()]) if len(deg) >= 2 else math.nan
    margin = ss.task_margin(c, d, se)
    common = sorted(set(eo) & set(joint))
    diffs = [joint[s] - eo[s] for s in common]
    gain = float(np.mean(diffs)) if diffs else math.nan
    lower = ss.t_bound(diffs, "lower")
    hist = {name: next((r.get("pred_hist") for r in sorted(rows, key=lambda r: r["seed"])
                        if r.get("strategy") == name and r.get("pred_hist")), "")
            for name in ("clean", "degraded input", "enhance_only")}
    reasons = []
    if not np.isfinite(c) or c < CLEAN_MIN:
        reads = "does not read the class" if task == "classification" else "does not find the lesions"
        reasons.append(f"the judge scores {c:.3f} on clean images (< {CLEAN_MIN}): it {reads}")
    if not np.isfinite(c - d) or not (c - d > margin):
        reasons.append(f"no headroom: clean − degraded is {c - d:+.3f}, not above the task margin {margin:.3f}")
    if not diffs:
        reasons.append("joint or enhance_only was not run, so a task gain cannot be checked")
    elif not (gain > margin and np.isfinite(lower) and lower > 0):
        why = "" if len(diffs) >= 2 else " (one seed gives no bound)"
        reasons.append(f"joint training does not help the independent judge: joint − enhance_only is {gain:+.3f} "
                       f"(one-sided 95% lower bound {lower:+.3f}{why}; margin {margin:.3f})")
    return {"task": task, "key": key, "clean": c, "degraded": d, "enhance_only": _mean(eo), "joint": _mean(joint),
            "headroom": c - d, "se": se, "margin": margin, "joint_gain": gain, "joint_gain_lower": lower,
            "joint_gain_per_seed": diffs, "hist": hist, "holds": not reasons, "reasons": reasons,
            "joint_no_help": bool(diffs) and not (gain > margin and np.isfinite(lower) and lower > 0)}


def statement(where: str, p: dict[str, Any]) -> str:
    """The report's sentence for one setting's premise."""
    if p["holds"]:
        return (f"{where}: the premise holds (judge {p['clean']:.3f} on clean, {p['degraded']:.3f} on degraded "
                f"input; joint − enhance_only {p['joint_gain']:+.3f}, one-sided 95% lower bound "
                f"{p['joint_gain_lower']:+.3f}, above the margin {p['margin']:.3f}): task conclusions are drawn here.")
    text = (f"{where}: **this setting cannot show a strategy helping the task** ({'; '.join(p['reasons'])}). "
            f"No task conclusion is drawn from it; its image-quality comparisons still stand.")
    if p["joint_no_help"] and p["clean"] >= CLEAN_MIN:
        text += (" That joint training does not help an independent judge here is itself a finding: in this "
                 "setting the task gradient carries no benefit a gate could keep.")
    return text
