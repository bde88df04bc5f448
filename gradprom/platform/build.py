"""What every driver builds before its first step: the device, the run's default name, the two models with their
optimizers (seeded), a batch on the device, and the training split's loader for an epoch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from gradprom.platform.config import Config
from gradprom.platform.data.dataset import DataInfo, EnhancementDataset
from gradprom.platform.errors import ConfigError, DataError, state_dict_problem
from gradprom.platform.models import build_enhancer, build_recognizer
from gradprom.platform.optim import build_optimizer


def epoch_seed(cfg: Config, epoch: int) -> int:
    """Seed of epoch `epoch`'s data order: the local loader, the Ray workers' global batches and a streamed
    store's shuffle all draw from it, so every driver sees the same batches."""
    return cfg.seed * 100_003 + epoch


def steps_in_epoch(n_batches: int, cfg: Config) -> int:
    """The batches an epoch trains on: all of them, or `optim.max_steps_per_epoch`."""
    cap = cfg.optim.max_steps_per_epoch
    return n_batches if cap is None else min(n_batches, cap)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; asking for cuda without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config field `run.device`: got 'cuda', but no CUDA device is available here; "
                          "use 'cpu' or 'auto'.")
    return torch.device(name)


def default_run_name(cfg: Config) -> str:
    """<strategy>-<task>-<YYYYmmdd-HHMMSS>, file-system safe."""
    strat = cfg.gradprom.strategy.replace(":", "-").replace(",", "_").replace("=", "")
    return f"{strat}-{cfg.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Models:
    """The two models and their optimizers."""

    enhancer: nn.Module
    recognizer: nn.Module
    opt_e: torch.optim.Optimizer
    opt_r: torch.optim.Optimizer | None


def build_models(cfg: Config, info: DataInfo, scale: int, device: torch.device) -> Models:
    """Enhancer, recognizer (optionally loaded from a checkpoint) and their optimizers (`optim.optimizer`), seeded."""
    torch.manual_seed(cfg.seed)
    E = build_enhancer(cfg.model.enhancer, info.channels, scale, cfg.model.enhancer_channels).to(device)
    R = build_recognizer(cfg.recognizer_name, cfg.task, info.channels, info.num_outputs(cfg.task),
                         cfg.model.recognizer_channels, norm=cfg.model.recognizer_norm).to(device)
    check_models_fit(E, R, cfg, info, scale, device)
    if cfg.gradprom.recognizer_checkpoint:
        load_recognizer(R, cfg.gradprom.recognizer_checkpoint, device)
    o = cfg.optim
    opt_e = build_optimizer(E.parameters(), o.optimizer, o.lr, o.weight_decay, o.momentum, cfg.gradprom.moments,
                            cfg.gradprom.gate_metric)
    opt_r = None
    if cfg.gradprom.recognizer_mode != "frozen":
        opt_r = build_optimizer(R.parameters(), o.optimizer, o.lr_recognizer, o.weight_decay, o.momentum)
    return Models(E, R, opt_e, opt_r)


def check_models_fit(E: nn.Module, R: nn.Module, cfg: Config, info: DataInfo, scale: int, device: torch.device) -> None:
    """A dry forward of E and R on zero images of the data's shape (eval mode, no grad: no weight, statistic or
    random state changes), so an image too small for the networks' down-sampling levels or the SR factor is a
    DataError before the first step, not a traceback inside it."""
    h, w = info.image_size
    m = cfg.model
    nets = (("enhancer", E, m.enhancer, m.enhancer_channels, (h // scale, w // scale)),
            ("recognizer", R, cfg.recognizer_name, m.recognizer_channels, (h, w)))
    for role, net, name, channels, (hi, wi) in nets:
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                net(torch.zeros(2, info.channels, hi, wi, device=device))
        except (RuntimeError, ValueError, IndexError) as e:
            why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            sr = (f" (after the x{scale} down-sampling of `data.degradation: {cfg.data.degradation}`)"
                  if scale > 1 else "")
            raise DataError(f"{info.source}: images of {h}x{w} pixels are too small for the {role} ({name}, channels "
                            f"{channels}): it gets {hi}x{wi} inputs{sr} and cannot down-sample them that far ({why}). "
                            f"Use larger images (`gradprom data convert --size`), a smaller SR factor, or fewer "
                            f"channel levels (`model.{role}_channels`).") from None
        finally:
            net.train(was)


def load_recognizer(R: nn.Module, path: str, device: torch.device) -> None:
    """Load R's weights from a GradProm checkpoint (or a bare recognizer state dict file)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"config field `gradprom.recognizer_checkpoint`: {path!r} does not exist.")
    try:
        state = torch.load(p, map_location=device, weights_only=True)
    except Exception as e:  # damaged or foreign file: report it, never unpickle code
        raise DataError(f"Recognizer checkpoint {path!r} could not be loaded ({type(e).__name__}); "
                        f"it may be truncated or not a checkpoint.") from None
    sd = state.get("recognizer", state) if isinstance(state, dict) else None
    try:
        R.load_state_dict(sd)
    except Exception as e:
        raise DataError(f"Recognizer checkpoint {path!r} does not fit the configured recognizer "
                        f"({state_dict_problem(e)}); check `model.recognizer`, its channels and the "
                        f"number of classes.") from None


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_lq, x_hq, y) of a collated batch, on `device`."""
    return (batch["x_lq"].to(device, non_blocking=True), batch["x_hq"].to(device, non_blocking=True),
            batch["y"].to(device, non_blocking=True))


def train_loader(ds: EnhancementDataset | IterableDataset, cfg: Config, epoch: int) -> DataLoader:
    """Shuffled loader of the training split; its order depends only on (seed, epoch)."""
    ds.set_epoch(epoch)
    if isinstance(ds, IterableDataset):  # a streamed store shuffles itself (row groups + buffer), seeded likewise
        return DataLoader(ds, batch_size=cfg.data.batch_size, num_workers=cfg.data.loader_workers, drop_last=False)
    gen = torch.Generator().manual_seed(epoch_seed(cfg, epoch))
    return DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=True, generator=gen,
                      num_workers=cfg.data.loader_workers, drop_last=False)
