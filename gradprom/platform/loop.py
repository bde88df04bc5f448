"""The local training loop and evaluation: reads top to bottom.

train(cfg): set up data and models -> (resume) -> per epoch: train steps, evaluate val, write tables,
checkpoint, figures -> test evaluation of the final model -> run.json "finished".
Resuming replays nothing twice: data order and degradations depend only on (seed, epoch, index), and the
checkpoint carries the models, the optimizers and the step counter, so a resumed run reproduces an
uninterrupted one (exactly on CPU; torchjd's stateful aggregators such as GradVac restart their averages).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, build_config, load_config_file, save_config
from .datasets import DataInfo, EnhancementDataset, build_datasets
from .errors import ConfigError, DataError
from .figures import save_curves, save_samples
from .losses import enhancement_loss, recognition_loss
from .metrics import EvalAccumulator, task_metric_name
from .models import build_enhancer, build_recognizer
from .optim import build_optimizer
from .rundir import RunDir, StepWriter, now_iso, versions
from .step import TrainStep

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# setup helpers
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
    if cfg.gradprom.recognizer_checkpoint:
        load_recognizer(R, cfg.gradprom.recognizer_checkpoint, device)
    o = cfg.optim
    opt_e = build_optimizer(E.parameters(), o.optimizer, o.lr, o.weight_decay, o.momentum, cfg.gradprom.moments,
                            cfg.gradprom.gate_metric)
    opt_r = None
    if cfg.gradprom.recognizer_mode != "frozen":
        opt_r = build_optimizer(R.parameters(), o.optimizer, o.lr_recognizer, o.weight_decay, o.momentum)
    return Models(E, R, opt_e, opt_r)


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
                        f"({str(e).splitlines()[0][:300]}); check `model.recognizer`, its channels and the "
                        f"number of classes.") from None


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (batch["x_lq"].to(device, non_blocking=True), batch["x_hq"].to(device, non_blocking=True),
            batch["y"].to(device, non_blocking=True))


def train_loader(ds: EnhancementDataset | IterableDataset, cfg: Config, epoch: int) -> DataLoader:
    """Shuffled loader of the training split; its order depends only on (seed, epoch)."""
    ds.set_epoch(epoch)
    if isinstance(ds, IterableDataset):  # a streamed store shuffles itself (row groups + buffer), seeded likewise
        return DataLoader(ds, batch_size=cfg.data.batch_size, num_workers=cfg.data.loader_workers, drop_last=False)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    return DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=True, generator=gen,
                      num_workers=cfg.data.loader_workers, drop_last=False)


# ---------------------------------------------------------------------------------------------------------
# evaluation
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
                       "clean": x_hq[:k].cpu().numpy(), "y": y[:k].cpu().numpy()}
    return acc.aggregate(), samples


def monitor_value(metrics: dict[str, float], cfg: Config) -> float:
    """The validation number that decides the best checkpoint (higher is better)."""
    key = task_metric_name(cfg.task) if cfg.run.monitor == "task" else cfg.run.monitor
    v = metrics.get(key, math.nan)
    return -math.inf if v is None or math.isnan(v) else v


# ---------------------------------------------------------------------------------------------------------
# pieces shared with the Ray Train worker (ray_worker.py)
class EpochStats:
    """Sums of one epoch's step results -> the `train` row of epochs.parquet."""

    def __init__(self) -> None:
        self.sums = {"loss_e": 0.0, "loss_r": 0.0, "cos": 0.0, "gate_open": 0.0, "gated": 0, "done": 0, "skipped": 0}

    def add(self, res) -> None:
        """Count one StepResult."""
        sums = self.sums
        if res.skipped:
            sums["skipped"] += 1
            return
        sums["done"] += 1
        for k in ("loss_e", "loss_r", "cos"):
            sums[k] += getattr(res, k)
        if not math.isnan(res.gate_open):  # NaN: the strategy is not a gate (torchjd)
            sums["gate_open"] += res.gate_open
            sums["gated"] += 1

    def gate(self) -> dict[str, float]:
        """gate_open_rate, mean_cos and skipped_steps of the epoch."""
        sums = self.sums
        gate_rate = sums["gate_open"] / sums["gated"] if sums["gated"] else math.nan
        return {"gate_open_rate": gate_rate, "mean_cos": sums["cos"] / max(sums["done"], 1),
                "skipped_steps": sums["skipped"]}

    def train_row(self, epoch: int, step: int) -> dict[str, Any]:
        """The epoch's `train` row."""
        d = max(self.sums["done"], 1)
        return {"epoch": epoch, "split": "train", "step": step, "loss_e": self.sums["loss_e"] / d,
                "loss_r": self.sums["loss_r"] / d, **self.gate()}


def training_state(models: Models, cfg: Config, epoch: int, step: int, best: float,
                   val: dict[str, float]) -> dict[str, Any]:
    """The checkpoint dict: models, optimizers, progress and config (plain tensors and numbers only)."""
    return {"enhancer": models.enhancer.state_dict(), "recognizer": models.recognizer.state_dict(),
            "opt_e": models.opt_e.state_dict(), "opt_r": models.opt_r.state_dict() if models.opt_r is not None else {},
            "epoch": epoch, "step": step, "best": best, "config": cfg.to_dict(), "metrics": val}


def load_training_state(models: Models, state: dict[str, Any], run_path: Path, ckpt: Path) -> None:
    """Load a checkpoint's models and optimizers; one that does not fit the config is a ConfigError."""
    try:
        models.enhancer.load_state_dict(state["enhancer"])
        models.recognizer.load_state_dict(state["recognizer"])
        models.opt_e.load_state_dict(state["opt_e"])
        if models.opt_r is not None and state.get("opt_r"):
            models.opt_r.load_state_dict(state["opt_r"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"--resume {str(run_path)!r}: its checkpoint {str(ckpt)!r} does not "
                          f"fit the configuration given ({str(e).splitlines()[0][:200]}); a resumed run keeps "
                          f"its task, data and models, so change only settings such as --epochs.") from None


def finish_test(run: RunDir, models: Models, test_ds, cfg: Config, info: DataInfo, device: torch.device,
                epoch_rows: list[dict[str, Any]], global_step: int) -> dict[str, float]:
    """Test the final model: the `test` row of epochs.parquet and the final figures; returns the metrics."""
    test, samples = evaluate_split(models, test_ds, cfg, info, device, sample_count=6)
    last_epoch = max(cfg.optim.epochs - 1, 0)
    epoch_rows[:] = [r for r in epoch_rows if r["split"] != "test"]
    epoch_rows.append({"epoch": last_epoch, "split": "test", "step": global_step, **test})
    run.write_epochs(epoch_rows)
    save_samples(run.figures / "samples.png", samples["degraded"], samples["enhanced"], samples["clean"])
    save_curves(run.figures / "curves.png", epoch_rows, task_metric_name(cfg.task))
    return test


# ---------------------------------------------------------------------------------------------------------
# training
def train(cfg: Config, *, resume: bool = False, run_path: str | Path | None = None, progress: bool = True,
          kind: str = "local", on_epoch: Callable[[int, dict[str, Any], dict[str, Any]], None] | None = None) -> Path:
    """Train E and R as `cfg` says; returns the run directory. Raises GradPromError for user mistakes.

    :param on_epoch: called after each epoch's validation and checkpoint with (epoch, train row, val row) of
        epochs.parquet; a driver (a Tune trial) reports from it, and may stop the run by raising.
    """
    # --- setup ----------------------------------------------------------------------------------------
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    device = resolve_device(cfg.run.device)
    run = RunDir(run_path or Path(cfg.run.out) / (cfg.run.name or default_run_name(cfg)))
    if run.exists() and not resume:
        raise ConfigError(f"Run directory {str(run.path)!r} already holds a run; continue it with --resume, "
                          f"or choose another --name / --out.")
    datasets, info, degradation = build_datasets(cfg)
    models = build_models(cfg, info, degradation.scale, device)
    step = TrainStep.from_config(cfg, models.enhancer, models.recognizer, models.opt_e, models.opt_r,
                                 device=device)
    metric = task_metric_name(cfg.task)

    # --- resume ---------------------------------------------------------------------------------------
    start_epoch, global_step, best, epoch_rows = 0, 0, -math.inf, []
    if resume and run.latest_checkpoint().is_file():
        state = load_checkpoint(run.latest_checkpoint(), map_location=device)
        load_training_state(models, state, run.path, run.latest_checkpoint())
        start_epoch, global_step, best = state["epoch"] + 1, state["step"], state["best"]
        epoch_rows = [r for r in run.read_epochs() if r["epoch"] <= state["epoch"]]
        run.truncate_steps(global_step)
        log.info("resuming %s from epoch %d (step %d)", run.path, start_epoch, global_step)
    run.create()
    started = run.read_run().get("start") if resume else None
    run.write_run(name=run.path.name, kind=kind, status="running", start=started or now_iso(), end=None,
                  seed=cfg.seed, task=cfg.task, strategy=cfg.gradprom.strategy, tau=cfg.gradprom.tau,
                  **cfg.gate_variant,
                  data=cfg.data.source, degradation=str(degradation), device=str(device), versions=versions(),
                  error=None)
    # the saved config leaves the name out, so `gradprom train --config <run>/config.yaml` starts a new run
    save_config(cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": None})}), run.config_yaml)
    writer = StepWriter(run.steps, cfg.run.flush_seconds)
    t0 = time.monotonic()

    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            # --- train one epoch ------------------------------------------------------------------------
            loader = train_loader(datasets["train"], cfg, epoch)
            n_steps = len(loader) if cfg.optim.max_steps_per_epoch is None else min(len(loader),
                                                                                    cfg.optim.max_steps_per_epoch)
            stats = EpochStats()
            bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=None if progress else True,
                       leave=False, dynamic_ncols=True)
            for i, batch in enumerate(loader):
                if i >= n_steps:
                    break
                res = step(*to_device(batch, device))
                global_step += 1
                writer.append({"step": global_step, "epoch": epoch, **res.row(), "time": time.monotonic() - t0})
                stats.add(res)
                bar.update(1)
                bar.set_postfix(loss_e=f"{res.loss_e:.4f}", loss_r=f"{res.loss_r:.3f}", cos=f"{res.cos:+.2f}")
            bar.close()
            writer.flush()
            gate = stats.gate()
            gate_rate = gate["gate_open_rate"]
            epoch_rows.append(stats.train_row(epoch, global_step))

            # --- evaluate on val, checkpoint, figures ------------------------------------------------------
            val, samples = evaluate_split(models, datasets["val"], cfg, info, device, sample_count=6)
            epoch_rows.append({"epoch": epoch, "split": "val", "step": global_step, **val, **gate})
            run.write_epochs(epoch_rows)
            score = monitor_value(val, cfg)
            state = training_state(models, cfg, epoch, global_step, max(best, score), val)
            save_checkpoint(run.latest_checkpoint(), state)
            if score > best:
                best = score
                save_checkpoint(run.best_checkpoint(), state)
            if cfg.run.figures_every_epoch:
                save_samples(run.figures / "samples.png", samples["degraded"], samples["enhanced"], samples["clean"])
                save_curves(run.figures / "curves.png", epoch_rows, metric)
            log.info("epoch %d/%d  val psnr %.2f dB (input %.2f)  ssim %.3f  %s %.3f  gate-open %.2f  mean cos %+.3f",
                     epoch + 1, cfg.optim.epochs, val["psnr"], val["psnr_input"], val["ssim"], metric, val[metric],
                     gate_rate, gate["mean_cos"])
            if on_epoch is not None:
                on_epoch(epoch, epoch_rows[-2], epoch_rows[-1])

        # --- test the final model ---------------------------------------------------------------------------
        test = finish_test(run, models, datasets["test"], cfg, info, device, epoch_rows, global_step)
        run.write_run(status="finished", end=now_iso(), test=test, nonfinite_steps=step.nonfinite_total,
                      steps=global_step)
        return run.path
    except KeyboardInterrupt:
        writer.flush()
        run.write_run(status="stopped", end=now_iso(), error="interrupted by the user")
        raise
    except BaseException as e:
        writer.flush()
        run.write_run(status="failed", end=now_iso(), error=f"{type(e).__name__}: {e}")
        raise


# ---------------------------------------------------------------------------------------------------------
# evaluation of a finished run
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
                        f"({str(e).splitlines()[0][:200]}); evaluate on data with the run's channels and classes."
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
