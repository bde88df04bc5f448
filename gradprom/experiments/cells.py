"""Train one cell (reusing it when finished) and evaluate it per test image, with both judges."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.config import build_config
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.evaluate import load_trained_models
from gradprom.platform.loop import train
from gradprom.platform.metrics import auc, dice, psnr, ssim
from gradprom.platform.rundir import RunDir, write_parquet

from .frozen import load_frozen
from .grid import Cell


def cell_done(cell_dir: Path) -> bool:
    """Finished and evaluated: the grid reuses it."""
    return (cell_dir / "cell.json").is_file() and RunDir(cell_dir).read_run().get("status") == "finished"


def run_cell(cell: Cell, raw_cfg: dict, cell_dir: Path, frozen: Path, device: torch.device) -> dict[str, Any]:
    """Train (or resume) the cell, evaluate it and write cell.json + per_image.parquet; returns the summary."""
    cfg = build_config(raw_cfg, source=f"experiment cell {cell.id}")
    if RunDir(cell_dir).exists():
        check_same_config(cell_dir, cfg)
    if cell_done(cell_dir):
        return json.loads((cell_dir / "cell.json").read_text())
    t0 = time.monotonic()
    train(cfg, resume=RunDir(cell_dir).exists(), run_path=cell_dir, progress=False, kind="experiment")
    seconds = time.monotonic() - t0
    per_image, summary = evaluate_cell(cfg, cell_dir, frozen, device)
    write_parquet(cell_dir / "per_image.parquet", per_image)
    summary.update(cell=cell.id, task=cell.task, degradation=cell.degradation, strategy=cell.strategy,
                   seed=cell.seed, seconds=seconds, **gate_stats(cell_dir))
    atomic_write_text(cell_dir / "cell.json", json.dumps(summary, indent=2) + "\n")
    return summary


def check_same_config(cell_dir: Path, cfg) -> None:
    """A cell directory is reused or resumed only for the very config it was run with."""
    from gradprom.platform.config import load_config_file
    from gradprom.platform.errors import ConfigError

    # validated, so fields added since the cell ran take their defaults instead of counting as changes
    old = build_config(load_config_file(cell_dir / "config.yaml"), source=str(cell_dir)).to_dict()
    new = cfg.to_dict()
    for d in (old, new):
        d.get("run", {}).pop("name", None)
    if old != new:
        diff = sorted(f"{sec}.{k}" for sec in new if isinstance(new[sec], dict)
                      for k in new[sec] if old.get(sec, {}).get(k) != new[sec][k])
        diff += sorted(k for k in new if not isinstance(new[k], dict) and old.get(k) != new[k])
        raise ConfigError(f"Experiment cell {str(cell_dir)!r} was run with a different configuration "
                          f"({', '.join(diff)}); its results cannot be reused. Use a new --out, or delete that "
                          f"cell's directory to run it again.")


def gate_stats(cell_dir: Path) -> dict[str, float]:
    """Over all training steps: gate-open rate, mean cosine, the share of steps with cos < 0 and the median
    ‖g_r‖/‖g_e‖ (of the raw, unscaled gradients; how large the task term is against the quality term)."""
    t = RunDir(cell_dir).read_steps()
    if t is None:
        return {"gate_open_rate": math.nan, "mean_cos": math.nan, "neg_cos_share": math.nan,
                "norm_ratio_median": math.nan}
    ge = np.asarray(t["norm_ge"].to_pylist(), dtype=float) if "norm_ge" in t.column_names else np.array([])
    gr = np.asarray(t["norm_gr"].to_pylist(), dtype=float) if "norm_gr" in t.column_names else np.array([])
    ok = np.isfinite(ge) & np.isfinite(gr) & (ge > 0) if ge.size == gr.size else np.zeros(0, dtype=bool)
    ratio = float(np.median(gr[ok] / ge[ok])) if ok.any() else math.nan
    cos = np.asarray(t["cos"].to_pylist(), dtype=float)
    gate = np.asarray(t["gate_open"].to_pylist(), dtype=float)
    cos = cos[np.isfinite(cos)]
    gate = gate[np.isfinite(gate)]
    return {"gate_open_rate": float(gate.mean()) if gate.size else math.nan,
            "mean_cos": float(cos.mean()) if cos.size else math.nan,
            "neg_cos_share": float((cos < 0).mean()) if cos.size else math.nan, "norm_ratio_median": ratio}


LESION = 2  # the phantoms' lesion label (platform/data/phantoms.py); its Dice is reported on its own


def lesion_dice(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) Dice of the lesion class alone; NaN where the reference has no lesion."""
    p, r = out.argmax(1) == LESION, mask == LESION
    inter = (p & r).flatten(1).sum(1).float()
    den = (p.flatten(1).sum(1) + r.flatten(1).sum(1)).float()
    return torch.where(r.flatten(1).any(1), 2 * inter / den.clamp_min(1), torch.full_like(den, math.nan))


def _judge_columns(out_f: torch.Tensor, y: torch.Tensor, task: str) -> dict[str, list]:
    """Per image, beside the task score: the judge's predicted class, or its lesion Dice."""
    if task == "classification":
        return {"pred_frozen": out_f.argmax(1).tolist()}
    return {"lesion_frozen": lesion_dice(out_f, y).tolist()}


def pred_histogram(preds: list[int], k: int) -> str:
    """The share of images the judge puts in each class, as 'p0/p1/...' (a collapsed judge shows at once)."""
    if not preds:
        return ""
    h = np.bincount(np.asarray(preds, dtype=int), minlength=k) / len(preds)
    return "/".join(f"{v:.2f}" for v in h)


def _task_scores(out: torch.Tensor, y: torch.Tensor, task: str, k: int) -> torch.Tensor:
    """Per image: 1/0 correct for classification, Dice for segmentation."""
    if task == "classification":
        return (out.argmax(1) == y).float()
    return dice(out, y, k)


@torch.no_grad()
def evaluate_cell(cfg, cell_dir: Path, frozen: Path, device: torch.device):
    """Per test image: PSNR, SSIM, the task score by the jointly trained R and by the frozen clean R."""
    datasets, info, degradation = build_datasets(cfg)
    models = load_trained_models(cfg, info, degradation.scale, RunDir(cell_dir).latest_checkpoint(), device)
    E, R = models.enhancer.eval(), models.recognizer.eval()
    judge = load_frozen(frozen, cfg.model_dump(mode="json"), info, device)
    k = info.num_outputs(cfg.task)
    rows, probs_j, probs_f, labels = [], [], [], []
    for batch in DataLoader(datasets["test"], batch_size=64, shuffle=False):
        x_lq, x_hq, y = batch["x_lq"].to(device), batch["x_hq"].to(device), batch["y"].to(device)
        x_hat = E(x_lq).float()
        out_j, out_f = R(x_hat).float(), judge(x_hat).float()
        cols = {"index": batch["index"].tolist(), "psnr": psnr(x_hat, x_hq).tolist(),
                "ssim": ssim(x_hat, x_hq).tolist(),
                "task_joint": _task_scores(out_j, y, cfg.task, k).tolist(),
                "task_frozen": _task_scores(out_f, y, cfg.task, k).tolist(), **_judge_columns(out_f, y, cfg.task)}
        rows += [dict(zip(cols, vals)) for vals in zip(*cols.values())]
        if cfg.task == "classification":
            probs_j.append(out_j.softmax(1).cpu()), probs_f.append(out_f.softmax(1).cpu()), labels.append(y.cpu())
    summary = {m: float(np.nanmean([r[m] for r in rows])) for m in ("psnr", "ssim", "task_joint", "task_frozen")}
    if cfg.task == "segmentation":
        summary["lesion_frozen"] = float(np.nanmean([r["lesion_frozen"] for r in rows]))
    if cfg.task == "classification":
        summary["pred_hist"] = pred_histogram([r["pred_frozen"] for r in rows], k)
        lab = torch.cat(labels)
        summary["auc_joint"] = auc(torch.cat(probs_j), lab)
        summary["auc_frozen"] = auc(torch.cat(probs_f), lab)
    return rows, summary


@torch.no_grad()
def evaluate_references(raw_cfg: dict, frozen: Path, device: torch.device) -> list[dict[str, Any]]:
    """The frozen recognizer on the degraded input (upsampled for SR) and on the clean images (the ceiling)."""
    cfg = build_config(raw_cfg, source="experiment references")
    datasets, info, _ = build_datasets(cfg)
    judge = load_frozen(frozen, cfg.model_dump(mode="json"), info, device)
    k = info.num_outputs(cfg.task)
    acc: dict[str, dict[str, list]] = {n: {"psnr": [], "ssim": [], "task": [], "extra": []}
                                       for n in ("degraded input", "clean")}
    for batch in DataLoader(datasets["test"], batch_size=64, shuffle=False):
        x_lq, x_hq, y = batch["x_lq"].to(device), batch["x_hq"].to(device), batch["y"].to(device)
        x_in = x_lq if x_lq.shape == x_hq.shape else F.interpolate(x_lq, size=x_hq.shape[-2:], mode="bilinear",
                                                                   align_corners=False)
        for name, img in (("degraded input", x_in), ("clean", x_hq)):
            acc[name]["psnr"] += psnr(img, x_hq).tolist() if name != "clean" else []
            acc[name]["ssim"] += ssim(img, x_hq).tolist() if name != "clean" else []
            out_f = judge(img).float()
            acc[name]["task"] += _task_scores(out_f, y, cfg.task, k).tolist()
            acc[name]["extra"] += next(iter(_judge_columns(out_f, y, cfg.task).values()))
    extra = (lambda v: {"pred_hist": pred_histogram(v, k)}) if cfg.task == "classification" else \
        (lambda v: {"lesion_frozen": float(np.nanmean(v))})
    return [{"strategy": name, "psnr": float(np.mean(v["psnr"])) if v["psnr"] else math.nan,
             "ssim": float(np.mean(v["ssim"])) if v["ssim"] else math.nan, "task_frozen": float(np.mean(v["task"])),
             **extra(v["extra"])} for name, v in acc.items()]


def read_per_image(cell_dir: Path) -> dict[str, np.ndarray]:
    """per_image.parquet as arrays, ordered by test index."""
    t = pq.read_table(cell_dir / "per_image.parquet").sort_by("index")
    return {c: np.asarray(t[c].to_pylist(), dtype=float) for c in t.column_names}
