"""The independent judge: a recognizer trained once on clean images, then frozen.

Each strategy's enhanced test images go through this same model, so no strategy is judged by a recognizer
it trained itself. It is trained per task on the seed-0 training split, without any enhancer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gradprom.platform.atomic import atomic_path
from gradprom.platform.config import build_config
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.losses import recognition_loss
from gradprom.platform.models import build_recognizer

log = logging.getLogger(__name__)


def frozen_path(root: Path, task: str) -> Path:
    return root / f"recognizer-{task}.pt"


def ensure_frozen_recognizer(raw_cfg: dict, root: Path, epochs: int, device: torch.device) -> Path:
    """Train the clean recognizer for raw_cfg's task unless it exists; return its checkpoint path."""
    cfg = build_config({**raw_cfg, "seed": 0, "data": {**raw_cfg["data"], "degradation": "none"}},
                       source="experiment (clean recognizer)")
    path = frozen_path(root, cfg.task)
    if path.is_file():
        return path
    datasets, info, _ = build_datasets(cfg)
    torch.manual_seed(0)
    R = build_recognizer(cfg.recognizer_name, cfg.task, info.channels, info.num_outputs(cfg.task),
                         cfg.model.recognizer_channels, norm=cfg.model.recognizer_norm).to(device)
    opt = torch.optim.Adam(R.parameters(), lr=cfg.optim.lr_recognizer)
    loss_fn = recognition_loss(cfg.task)
    R.train()
    for epoch in range(epochs):
        loader = DataLoader(datasets["train"], batch_size=cfg.data.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(epoch))
        for batch in loader:
            loss = loss_fn(R(batch["x_hq"].to(device)), batch["y"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    log.info("clean %s recognizer trained for %d epochs -> %s", cfg.task, epochs, path)
    with atomic_path(path) as tmp:
        torch.save({"recognizer": R.state_dict(), "task": cfg.task, "epochs": epochs}, tmp)
    return path


def load_frozen(path: Path, raw_cfg: dict, info, device: torch.device) -> torch.nn.Module:
    """The frozen recognizer in eval mode with gradients off."""
    cfg = build_config(raw_cfg, source="experiment")
    R = build_recognizer(cfg.recognizer_name, cfg.task, info.channels, info.num_outputs(cfg.task),
                         cfg.model.recognizer_channels, norm=cfg.model.recognizer_norm).to(device)
    R.load_state_dict(torch.load(path, map_location=device, weights_only=True)["recognizer"])
    R.eval().requires_grad_(False)
    return R
