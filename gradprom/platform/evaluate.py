"""Evaluation: metrics of E and R on a split, the number that picks the best checkpoint, and evaluation of a
finished run's checkpoint (`gradprom evaluate`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gradprom.platform.build import Models, build_models, resolve_device, to_device
from gradprom.platform.checkpoint import load_checkpoint
from gradprom.platform.config import Config, build_config, load_config_file
from gradprom.platform.data.dataset import DataInfo, EnhancementDataset
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.errors import DataError, state_dict_problem
from gradprom.platform.losses import enhancement_loss, recognition_loss
from gradprom.platform.metrics import EvalAccumulator, psnr, ssim, task_metric_name
from gradprom.platform.rundir import RunDir


@torch.no_grad()
def evaluate_split(models: Models, ds: EnhancementDataset, cfg: Config, info: DataInfo, device: torch.device,
                   sample_count: int = 0) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Metrics of E and R on one split; optionally the first `sample_count` images for a figure."""
    E, R = models.enhancer, models.recognizer
    E.eval(), R.eval()
    acc = EvalAccumulator(cfg.task, info.num_outputs(cfg.task))
    loader = DataLoader(ds, batch_size=max(cfg.data.batch_size, 64), shuffle=False,
                        num_workers=cfg.data.loader_workers)
    autocast = device.type == "cuda"
    samples = None
    enh_loss, rec_loss = enhancement_loss(cfg.gradprom.enhancement_loss), recognition_loss(cfg.task)
    for batch in loader:
        x_lq, x_hq, y = to_device(batch, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            x_hat = E(x_lq)
            out = R(x_hat)
        x_hat, out = x_hat.float(), out.float()
        x_in = x_lq if x_lq.shape == x_hq.shape else F.interpolate(x_lq, size=x_hq.shape[-2:], mode="bilinear",
                                                                   align_corners=False)
        acc(x_hat, x_hq, x_in, out, y, loss_e=float(cfg.gradprom.lambda_e * enh_loss(x_hat, x_hq)),
            loss_r=float(cfg.gradprom.lambda_r * rec_loss(out, y)))
        if samples is None and sample_count:
            k = min(sample_count, len(x_hq))
            samples = {"degraded": x_in[:k].cpu().numpy(), "enhanced": x_hat[:k].cpu().numpy(),
                       "clean": x_hq[:k].cpu().numpy(), "y": y[:k].cpu().numpy(),
                       "pred": out[:k].argmax(1).cpu().numpy(),  # class, or the predicted mask
                       "psnr": psnr(x_hat[:k], x_hq[:k]).cpu().numpy(), "ssim": ssim(x_hat[:k], x_hq[:k]).cpu().numpy(),
                       "psnr_in": psnr(x_in[:k], x_hq[:k]).cpu().numpy()}
    return acc.aggregate(), samples


def monitor_value(metrics: dict[str, float], cfg: Config) -> float:
    """The validation number that decides the best checkpoint (higher is better)."""
    key = task_metric_name(cfg.task) if cfg.run.monitor == "task" else cfg.run.monitor
    v = metrics.get(key, math.nan)
    return -math.inf if v is None or math.isnan(v) else v


def load_trained_models(cfg: Config, info: DataInfo, scale: int, checkpoint: Path,
                        device: torch.device) -> Models:
    """E and R with a run's checkpoint weights (the checkpoint holds R, so the recognizer the run may have
    started from is not loaded); a checkpoint that does not fit the data is a DataError."""
    plain = cfg.model_copy(update={"gradprom": cfg.gradprom.model_copy(update={"recognizer_checkpoint": None})})
    models = build_models(plain, info, scale, device)
    state = load_checkpoint(checkpoint, map_location=device)
    try:
        models.enhancer.load_state_dict(state["enhancer"])
        models.recognizer.load_state_dict(state["recognizer"])
    except RuntimeError as e:
        raise DataError(f"Checkpoint {str(checkpoint)!r} does not fit the data {cfg.data.source!r} "
                        f"({state_dict_problem(e)}); evaluate on data with the run's channels and classes."
                        ) from None
    return models


def evaluate_run(run_path: str | Path, checkpoint: str = "best", split: str = "test",
                 data: str | None = None, device: str = "auto") -> dict[str, float]:
    """Evaluate a run's checkpoint on a split (optionally of other data with the same shape and classes)."""
    run = RunDir(run_path)
    if not run.config_yaml.is_file():
        raise DataError(f"{str(run.path)!r} is not a run directory (no config.yaml); pass the directory that "
                        f"`gradprom train` wrote, e.g. runs/<name>.")
    raw = load_config_file(run.config_yaml)
    if data:
        raw.setdefault("data", {})["source"] = data
    cfg = build_config(raw, source=str(run.config_yaml))
    ckpt = {"best": run.best_checkpoint(), "latest": run.latest_checkpoint()}.get(checkpoint, Path(checkpoint))
    dev = resolve_device(device)
    datasets, info, degradation = build_datasets(cfg)
    models = load_trained_models(cfg, info, degradation.scale, ckpt, dev)
    metrics, _ = evaluate_split(models, datasets[split], cfg, info, dev)
    return metrics
