"""The local training loop: reads top to bottom.

train(cfg): set up data and models -> (resume) -> per epoch: train steps, evaluate val, write tables,
checkpoint, figures -> test evaluation of the final model -> run.json "finished".
Resuming replays nothing twice: data order and degradations depend only on (seed, epoch, index), and the
checkpoint carries the models, the optimizers and the step counter, so a resumed run reproduces an
uninterrupted one (exactly on CPU; torchjd's stateful aggregators such as GradVac restart their averages).
The epoch loop itself is `EpochRunner` (epoch.py), the same one the Ray Train workers and Flower sites run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradprom.platform.build import (
    build_models,
    default_run_name,
    resolve_device,
    steps_in_epoch,
    to_device,
    train_loader,
)
from gradprom.platform.checkpoint import load_checkpoint
from gradprom.platform.config import Config, save_config
from gradprom.platform.data.holdout import HOLDOUT_RULE
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.epoch import EpochRunner
from gradprom.platform.lifecycle import RunLifecycle
from gradprom.platform.rundir import RunDir, versions
from gradprom.platform.step import TrainStep

log = logging.getLogger(__name__)


def saved_config(cfg: Config) -> Config:
    """The config as a run saves it: without its name, so `gradprom train --config <run>/config.yaml` starts a
    new run."""
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": None})})


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
    life = RunLifecycle(run, resume, resume_hint=f"`gradprom train --resume {run.path}`")
    log.info("loading data (%s)…", cfg.data.source)
    datasets, info, degradation = build_datasets(cfg)
    models = build_models(cfg, info, degradation.scale, device)
    step = TrainStep.from_config(cfg, models.enhancer, models.recognizer, models.opt_e, models.opt_r,
                                 device=device)
    runner = EpochRunner(cfg, models, step, info, device, run=run, eval_sets=datasets, progress=progress)

    # --- resume ---------------------------------------------------------------------------------------
    latest = run.latest_checkpoint()
    state = load_checkpoint(latest, map_location=device) if resume and latest.is_file() else None
    runner.resume(state, latest)

    header = dict(seed=cfg.seed, task=cfg.task, strategy=cfg.gradprom.strategy, tau=cfg.gradprom.tau,
                  **cfg.gate_variant, data=cfg.data.source, degradation=str(degradation), holdout=HOLDOUT_RULE,
                  device=str(device), versions=versions())
    with life.running(kind, header, save=lambda path: save_config(saved_config(cfg), path)):
        for epoch in runner.epochs():
            # --- train one epoch ------------------------------------------------------------------------
            loader = train_loader(datasets["train"], cfg, epoch)
            batches = (to_device(b, device) for b in loader)
            stats = runner.train_epoch(epoch, batches, steps_in_epoch(len(loader), cfg))

            # --- evaluate on val, checkpoint, figures ---------------------------------------------------
            runner.end_epoch(epoch, stats)
            if on_epoch is not None:
                on_epoch(epoch, runner.p.rows[-2], runner.p.rows[-1])

        # --- test the final model ---------------------------------------------------------------------------
        test = runner.finish()
        life.finished(test=test)
    return run.path
