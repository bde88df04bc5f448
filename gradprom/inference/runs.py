"""Load a finished (or stopped) run's enhancer, and optionally its recognizer, for inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradprom.platform.build import resolve_device
from gradprom.platform.checkpoint import load_checkpoint
from gradprom.platform.config import Config, build_config, load_config_file
from gradprom.platform.data.dataset import DataInfo
from gradprom.platform.data.degradations import parse_degradation
from gradprom.platform.errors import DataError
from gradprom.platform.evaluate import load_trained_models
from gradprom.platform.rundir import RunDir
from gradprom.platform.store.format import Store, is_store


@dataclass
class TrainedRun:
    """A run's models in eval mode and the facts inference needs about its training data."""

    path: Path
    cfg: Config
    checkpoint: Path
    enhancer: nn.Module
    recognizer: nn.Module
    channels: int
    scale: int  # super-resolution factor (1: denoise/deblur)
    train_size: tuple[int, int]  # (H, W) of the enhancer's training inputs (the low-resolution size for SR)
    device: torch.device

    @property
    def name(self) -> str:
        return self.path.name


def checkpoint_path(run: RunDir, checkpoint: str) -> Path:
    """best | latest | a path -> the checkpoint file."""
    return {"best": run.best_checkpoint(), "latest": run.latest_checkpoint()}.get(checkpoint, Path(checkpoint))


def _channels(state: dict) -> int:
    """Image channels of the enhancer: the input channels of its first convolution."""
    for t in state["enhancer"].values():
        if t.ndim == 4:
            return int(t.shape[1])
    raise DataError("the checkpoint's enhancer has no convolution; it was not written by `gradprom train`.")


def _num_outputs(state: dict) -> int:
    """Recognizer outputs (classes): the length of its last bias."""
    biases = [t for k, t in state["recognizer"].items() if k.endswith("bias") and t.ndim == 1]
    return int(biases[-1].shape[0]) if biases else 2


def _train_size(cfg: Config, scale: int) -> tuple[int, int]:
    """The clean training image size divided by the SR factor: the size the enhancer saw."""
    src = cfg.data.source
    if src != "phantoms" and is_store(src):
        _, h, w = Store(src).shape
    else:  # phantoms; for a folder or .npz the size is not recorded, so the configured size stands in
        h = w = cfg.data.image_size
    return max(h // scale, 8), max(w // scale, 8)


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> TrainedRun:
    """The run at `run_dir` with its `checkpoint` (best | latest | a path) loaded; user mistakes raise DataError."""
    run = RunDir(run_dir)
    if not run.config_yaml.is_file():
        raise DataError(f"{str(run.path)!r} is not a run directory (no config.yaml); pass the directory that "
                        f"`gradprom train` wrote, e.g. runs/<name>.")
    cfg = build_config(load_config_file(run.config_yaml), source=str(run.config_yaml))
    ckpt = checkpoint_path(run, checkpoint)
    state = load_checkpoint(ckpt)  # weights_only=True; a missing or damaged file is a DataError
    scale = parse_degradation(cfg.data.degradation).scale
    channels, k = _channels(state), _num_outputs(state)
    info = DataInfo(channels=channels, image_size=(cfg.data.image_size,) * 2, num_classes=k, seg_classes=k,
                    source=cfg.data.source)
    dev = resolve_device(device)
    models = load_trained_models(cfg, info, scale, ckpt, dev)
    models.enhancer.eval(), models.recognizer.eval()
    return TrainedRun(run.path, cfg, ckpt, models.enhancer, models.recognizer, channels, scale,
                      _train_size(cfg, scale), dev)
