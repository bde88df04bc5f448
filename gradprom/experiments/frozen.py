"""Recognizers trained once on clean images: the independent judge, and the warm start of the cells' R.

The **judge** scores each strategy's enhanced test images, so no strategy is judged by a recognizer it trained
itself. It is independent of the cells' recognizer: another seed (JUDGE_SEED) and, for classification, another
architecture (DenseNet against the cells' ResNet; segmentation has only the U-Net, so there it differs by seed
and width). The **warm start** (a preset's `warm_start`) is a clean recognizer of the cells' own architecture,
from which every cell's R starts (`gradprom.recognizer_checkpoint`, still `recognizer_mode: joint`), so g_r
comes from a recognizer that knows the classes. Both are trained on the training split of seed 0 without any
enhancer, and each checkpoint records the config it was trained with: a rerun into the same --out with other
data, contrast or size raises instead of silently reusing an old model (evidence audit D14).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from gradprom.platform.atomic import atomic_path
from gradprom.platform.config import build_config
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.losses import recognition_loss
from gradprom.platform.models import build_recognizer

log = logging.getLogger(__name__)

JUDGE_SEED = 1000  # the judge's initialisation and data order; the warm start uses seed 0 like the data
ROLES = ("judge", "warm")


def frozen_path(root: Path, task: str, role: str = "judge") -> Path:
    return root / (f"recognizer-{task}.pt" if role == "judge" else f"warm-{task}.pt")


def _role_config(raw_cfg: dict, role: str) -> dict:
    """The raw config a role's recognizer is built and trained from (clean images, data seed 0)."""
    model = dict(raw_cfg.get("model", {}))
    if role == "judge":
        task = raw_cfg.get("task", "classification")
        if task == "classification":
            model["recognizer"] = "densenet"
        else:  # only the U-Net segments: differ by width
            model["recognizer_channels"] = [2 * c for c in model.get("recognizer_channels", [16, 32, 64])]
        model["recognizer_norm"] = "batch"  # the judge only runs in eval mode
    gp = {k: v for k, v in raw_cfg.get("gradprom", {}).items() if k != "recognizer_checkpoint"}
    return {**raw_cfg, "seed": 0, "model": model, "gradprom": gp,
            "data": {**raw_cfg["data"], "degradation": "none"}}


def _identity(cfg, role: str, epochs: int) -> dict[str, Any]:
    """What makes two trainings of a role's recognizer the same: checked before a checkpoint is reused."""
    d = cfg.data.model_dump(mode="json")
    for k in ("degradation", "batch_size", "loader_workers", "streaming", "stream_above_mb", "shuffle_buffer"):
        d.pop(k, None)
    return {"role": role, "task": cfg.task, "epochs": epochs, "data": d, "batch_size": cfg.data.batch_size,
            "recognizer": cfg.recognizer_name, "recognizer_channels": list(cfg.model.recognizer_channels),
            "recognizer_norm": cfg.model.recognizer_norm, "lr": cfg.optim.lr_recognizer,
            "seed": JUDGE_SEED if role == "judge" else 0}


def train_recognizer(cfg, epochs: int, device: torch.device, seed: int, inputs: str = "x_hq") -> torch.nn.Module:
    """A recognizer of cfg's model trained on cfg's training images for `epochs` (Adam, seeded): the clean
    ones (inputs x_hq), or the degraded ones (x_lq, upsampled to the clean size when smaller)."""
    datasets, info, _ = build_datasets(cfg)
    torch.manual_seed(seed)
    R = build_recognizer(cfg.recognizer_name, cfg.task, info.channels, info.num_outputs(cfg.task),
                         cfg.model.recognizer_channels, norm=cfg.model.recognizer_norm).to(device)
    opt = torch.optim.Adam(R.parameters(), lr=cfg.optim.lr_recognizer)
    loss_fn = recognition_loss(cfg.task)
    R.train()
    for epoch in range(epochs):
        loader = DataLoader(datasets["train"], batch_size=cfg.data.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for batch in loader:
            x = batch[inputs]
            if x.shape[-2:] != batch["x_hq"].shape[-2:]:
                x = torch.nn.functional.interpolate(x, size=batch["x_hq"].shape[-2:], mode="bilinear",
                                                    align_corners=False)
            loss = loss_fn(R(x.to(device)), batch["y"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return R.eval()


def ensure_frozen_recognizer(raw_cfg: dict, root: Path, epochs: int, device: torch.device,
                             role: str = "judge") -> Path:
    """Train the clean recognizer of `role` for raw_cfg's task unless a matching one exists; return its path."""
    from gradprom.platform.errors import ConfigError

    cfg = build_config(_role_config(raw_cfg, role), source=f"experiment (clean recognizer, {role})")
    path = frozen_path(root, cfg.task, role)
    ident = _identity(cfg, role, epochs)
    if path.is_file():
        old = torch.load(path, map_location="cpu", weights_only=True).get("identity")
        if old != ident:
            changed = sorted(k for k in ident if (old or {}).get(k) != ident[k])
            raise ConfigError(f"Clean recognizer {str(path)!r} was trained with another configuration "
                              f"({', '.join(changed) or 'no recorded configuration'}); it cannot judge this grid. "
                              f"Use a new --out, or delete that file to train it again.")
        return path
    R = train_recognizer(cfg, epochs, device, ident["seed"])
    log.info("clean %s recognizer (%s) trained for %d epochs -> %s", cfg.task, role, epochs, path)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"recognizer": R.state_dict(), "task": cfg.task, "epochs": epochs, "identity": ident}, tmp)
    return path


def load_frozen(path: Path, raw_cfg: dict, info, device: torch.device, role: str = "judge") -> torch.nn.Module:
    """The frozen recognizer of `role` in eval mode with gradients off."""
    cfg = build_config(_role_config(raw_cfg, role), source="experiment")
    R = build_recognizer(cfg.recognizer_name, cfg.task, info.channels, info.num_outputs(cfg.task),
                         cfg.model.recognizer_channels, norm=cfg.model.recognizer_norm).to(device)
    R.load_state_dict(torch.load(path, map_location=device, weights_only=True)["recognizer"])
    R.eval().requires_grad_(False)
    return R
