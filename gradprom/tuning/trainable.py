"""The Tune function trainable: one trial = one ordinary GradProm run, reported to Tune every epoch.

`workers_per_trial: 0` runs the engine's local loop in the trial's own process and calls `tune.report` from its
per-epoch hook, so ASHA can stop the trial between epochs. `workers_per_trial: N` launches the Ray Train runner
(N workers) from the trial and forwards rank 0's per-epoch reports with Ray's `TuneReportCallback`: the
Train-in-Tune pattern of Ray 2.55 (a TorchTrainer handed straight to a Tuner fails under Train V2).
Each trial writes its run directory to `<experiment>/trials/<trial_id>/`.

The last epoch is reported only after the run has tested its model and closed its directory: ASHA stops every
trial that reaches max_epochs, and Tune stops a trial by ending its process, which would otherwise cut the
run (and, with Ray Train, its workers' placement group) short.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from gradprom.platform.config import build_config
from gradprom.platform.metrics import task_metric_name
from gradprom.platform.rundir import RunDir, now_iso

from .space import apply_params

log = logging.getLogger(__name__)
TRIALS_DIR = "trials"


def epoch_metrics(task: str, epoch: int, train_row: dict[str, Any], val_row: dict[str, Any]) -> dict[str, Any]:
    """What a trial reports after an epoch: validation quality and task metrics, train losses, gate stats."""
    metric = task_metric_name(task)
    out = {"epoch": epoch, "psnr": val_row["psnr"], "ssim": val_row["ssim"], "task": val_row[metric]}
    for name in ("accuracy", "auc", "dice"):
        if name in val_row:
            out[name] = val_row[name]
    for name in ("loss_e", "loss_r", "gate_open_rate", "mean_cos"):
        v = train_row.get(name)
        out[name] = float("nan") if v is None else float(v)
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any], exp_dir: str, trial_id: str, max_epochs: int,
                 workers: int) -> dict[str, Any]:
    """The trial's run config: the base, the sampled values, the trial's epochs and its run directory."""
    raw = apply_params(base, params)
    raw["optim"] = {**raw.get("optim", {}), "epochs": max_epochs}
    raw["run"] = {**raw.get("run", {}), "out": str(Path(exp_dir) / TRIALS_DIR), "name": trial_id}
    raw["distributed"] = {**raw.get("distributed", {}), "workers": workers, "address": None}
    return raw


def run_trial(params: dict[str, Any], *, base: dict[str, Any], exp_dir: str, max_epochs: int,
              workers: int = 0) -> None:
    """Tune function trainable: train one GradProm run with the sampled `params`, reporting every epoch."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = build_config(trial_config(base, params, exp_dir, trial_id, max_epochs, workers),
                       source=f"tune trial {trial_id}")
    run_path = Path(exp_dir) / TRIALS_DIR / trial_id
    if RunDir(run_path).exists():
        # Tune restarts an unfinished trial from its beginning (after a resume or a failure): so does its run
        shutil.rmtree(run_path)
    try:
        if workers == 0:
            _train_local(cfg, run_path)
        else:
            _train_workers(cfg, run_path)
    except SystemExit:
        # the scheduler (ASHA) stopped the trial: tune.report raises SystemExit in the trial's thread
        RunDir(run_path).write_run(status="stopped", end=now_iso(), error="stopped early by the scheduler (ASHA)")
        raise


def _train_local(cfg, run_path: Path) -> None:
    """The local loop, reporting every epoch; the last epoch is reported after the final test, so a scheduler
    that stops trials at max_epochs (ASHA does) cannot cut the run short of its test and figures."""
    from ray import tune

    from gradprom.platform.loop import train

    last: dict[str, Any] = {}

    def report(epoch: int, train_row: dict[str, Any], val_row: dict[str, Any]) -> None:
        metrics = epoch_metrics(cfg.task, epoch, train_row, val_row)
        if epoch == cfg.optim.epochs - 1:
            last.update(metrics)
        else:
            tune.report(metrics)

    train(cfg, run_path=run_path, progress=False, on_epoch=report)
    _report_last(last)


def _report_last(metrics: dict[str, Any]) -> None:
    from ray import tune

    if metrics:
        try:
            tune.report(metrics)
        except SystemExit:  # stopped at max_epochs: the run is complete, nothing is lost
            pass


def _train_workers(cfg, run_path: Path) -> None:
    """The Ray Train runner on N workers; rank 0's reports reach Tune through `TuneReportCallback`, except the
    last epoch's, which is reported from the run directory once the run has tested its model (see above)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from gradprom.platform.distributed.runner import train_on_ray

    class HoldLastEpoch(TuneReportCallback):
        """TuneReportCallback that does not forward the last epoch's report."""

        def __init__(self, last_epoch: int) -> None:
            super().__init__()
            self.last_epoch = last_epoch

        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("epoch") == self.last_epoch:
                return
            super().after_report(run_context, metrics, checkpoint)

    last_epoch = cfg.optim.epochs - 1
    train_on_ray(cfg, run_path=run_path, callbacks=[HoldLastEpoch(last_epoch)])
    rows = [r for r in RunDir(run_path).read_epochs() if r["epoch"] == last_epoch]
    train_row = next(r for r in rows if r["split"] == "train")
    val_row = next(r for r in rows if r["split"] == "val")
    _report_last(epoch_metrics(cfg.task, last_epoch, train_row, val_row))
