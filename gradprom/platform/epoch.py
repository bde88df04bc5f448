"""The epoch runner: the loop around the training step, shared by every driver.

The local loop, each Ray Train rank, each Flower site and each Tune trial (through those two) run epochs with
this one class; they differ only in the batches they feed it (the whole loader, this rank's slice of every
global batch, a site's local steps), the step's reducer, and where they report. Per epoch:

  train_epoch   the batches through `TrainStep`, one step row each (the chief writes them to steps/)
  end_epoch     chief only: evaluate val -> epochs.parquet -> best.pt (if improved), then latest.pt -> figures
  finish        chief only: test the final model -> the test row, final figures, run.json's test metrics

`resume(state)` restores the same things for every driver: models and optimizers, the epoch and step reached
(also the step's own counter, so "stopped at step N" errors count from the run's start), the best score, the
epoch rows up to the checkpoint, and the step rows up to its step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gradprom.platform.build import Models
from gradprom.platform.checkpoint import load_training_state, save_checkpoint, training_state
from gradprom.platform.config import Config
from gradprom.platform.data.dataset import DataInfo
from gradprom.platform.errors import TrainingError
from gradprom.platform.evaluate import evaluate_split, monitor_value
from gradprom.platform.figures import save_curves, save_sample_figure
from gradprom.platform.metrics import task_metric_name
from gradprom.platform.progress import PlainProgress, on_terminal
from gradprom.platform.recovery import clean_temp_files, repair_best
from gradprom.platform.rundir import RunDir, StepWriter
from gradprom.platform.step import StepResult, TrainStep
from gradprom.platform.tensorboard import TensorBoardMirror

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (x_lq, x_hq, y) on the step's device


class EpochStats:
    """Sums of one epoch's step results -> the `train` row of epochs.parquet."""

    def __init__(self) -> None:
        self.sums = {"loss_e": 0.0, "loss_r": 0.0, "cos": 0.0, "gate_open": 0.0, "gated": 0, "done": 0, "skipped": 0,
                     "norm_ge": 0.0, "norm_gr": 0.0}

    def add(self, res: StepResult) -> None:
        """Count one StepResult."""
        sums = self.sums
        if res.skipped:
            sums["skipped"] += 1
            return
        sums["done"] += 1
        for k in ("loss_e", "loss_r", "cos", "norm_ge", "norm_gr"):
            sums[k] += getattr(res, k)
        if not math.isnan(res.gate_open):  # NaN: the strategy is not a gate (torchjd)
            sums["gate_open"] += res.gate_open
            sums["gated"] += 1

    def mean(self, key: str) -> float:
        """Mean of a summed field over the steps taken (not skipped)."""
        return self.sums[key] / max(self.sums["done"], 1)

    def gate(self) -> dict[str, float]:
        """gate_open_rate, mean_cos and skipped_steps of the epoch."""
        sums = self.sums
        gate_rate = sums["gate_open"] / sums["gated"] if sums["gated"] else math.nan
        return {"gate_open_rate": gate_rate, "mean_cos": self.mean("cos"), "skipped_steps": sums["skipped"]}

    def train_row(self, epoch: int, step: int) -> dict[str, Any]:
        """The epoch's `train` row."""
        return {"epoch": epoch, "split": "train", "step": step, "loss_e": self.mean("loss_e"),
                "loss_r": self.mean("loss_r"), **self.gate()}


@dataclass
class Progress:
    """Where a run stands between epochs; what a checkpoint restores."""

    epoch: int = 0  # the next epoch to run
    step: int = 0  # optimizer steps taken so far (the step rows' numbering)
    best: float = -math.inf  # best monitored val score so far
    rows: list[dict[str, Any]] = field(default_factory=list)  # epochs.parquet rows so far


class EpochRunner:
    """Epochs of one TrainStep; with a run directory (the chief) it also writes the tables and checkpoints."""

    def __init__(self, cfg: Config, models: Models, step: TrainStep, info: DataInfo, device: torch.device, *,
                 run: RunDir | None = None, eval_sets: dict[str, Any] | None = None, progress: bool = True):
        self.cfg, self.models, self.step, self.info, self.device = cfg, models, step, info, device
        self.run, self.eval_sets, self.progress = run, eval_sets, progress
        self.writer = StepWriter(run.steps, cfg.run.flush_seconds) if run is not None else None
        self.tb = TensorBoardMirror(run.path) if run is not None and cfg.run.tensorboard else None
        self.p = Progress()
        self.metric = task_metric_name(cfg.task)
        self.t0 = time.monotonic()

    # ---- resume --------------------------------------------------------------------------------------------
    def resume(self, state: dict[str, Any] | None, where: str | Path) -> None:
        """Continue from a training checkpoint (None: a fresh start, which drops step rows of a run that died
        before its first checkpoint, so they are not written twice)."""
        if self.run is not None:
            clean_temp_files(self.run)  # a crash mid-write leaves .<name>.*.tmp files
        if state is None:
            if self.run is not None:
                self.run.truncate_steps(0)
            return
        run_path = self.run.path if self.run is not None else Path(str(where))
        load_training_state(self.models, state, run_path, Path(str(where)))
        best = state["best"]
        if self.run is not None and Path(str(where)) == self.run.latest_checkpoint():
            best = repair_best(self.run, state, lambda val: monitor_value(val, self.cfg))
        self.p = Progress(state["epoch"] + 1, state["step"], best)
        self.step.steps_done = state["step"]
        if self.step.scaler is not None:  # checkpoints before the scaler's state was saved hold none: a fresh EMA
            self.step.scaler.load_state_dict(state.get("scaler", {}))
        if self.tb is not None:
            self.tb.purge_step = state["step"] + 1
        if self.run is not None:
            self.p.rows = [r for r in self.run.read_epochs() if r["epoch"] <= state["epoch"] and r["split"] != "test"]
            self.run.truncate_steps(state["step"])
        log.info("resuming from epoch %d (step %d, %s)", self.p.epoch, self.p.step, where)

    def epochs(self) -> range:
        """The epochs still to run."""
        return range(self.p.epoch, self.cfg.optim.epochs)

    # ---- train ---------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, batches: Iterable[Batch], n_steps: int,
                    after_step: Callable[[StepResult], None] | None = None) -> EpochStats:
        """Run up to `n_steps` steps on `batches`; one step row each (written by the chief)."""
        stats = EpochStats()
        desc = f"epoch {epoch + 1}/{self.cfg.optim.epochs}"
        bar = tqdm(total=n_steps, desc=desc, disable=None if self.progress else True, leave=False, dynamic_ncols=True)
        plain = PlainProgress(desc, n_steps) if self.progress and not on_terminal() else None  # tqdm is off then
        try:
            for i, (x_lq, x_hq, y) in enumerate(batches):
                if i >= n_steps:
                    break
                res = self.step(x_lq, x_hq, y)
                self.p.step += 1
                if self.writer is not None:
                    row = {"step": self.p.step, "epoch": epoch, **res.row(), "time": time.monotonic() - self.t0}
                    self.writer.append(row)
                    if self.tb is not None:
                        self.tb.step(row)
                stats.add(res)
                if after_step is not None:
                    after_step(res)
                bar.update(1)
                bar.set_postfix(loss_e=f"{res.loss_e:.4f}", loss_r=f"{res.loss_r:.3f}", cos=f"{res.cos:+.2f}")
                if plain is not None and not res.skipped:
                    plain.update(res.loss_e, res.loss_r, res.cos, res.gate_open)
        finally:  # also when a step raises (e.g. a NaN streak): the rows of the steps taken are kept
            bar.close()
            if self.writer is not None:
                self.writer.flush()
        return stats

    # ---- end of an epoch (chief) ---------------------------------------------------------------------------
    def end_epoch(self, epoch: int, stats: EpochStats, extra: dict[str, Any] | None = None,
                  note: str = "") -> tuple[dict[str, float], dict[str, Any]]:
        """Evaluate val, write epochs.parquet, checkpoint and figures; returns (val metrics, checkpoint state).

        best.pt is written before latest.pt: latest records the best score, so a crash between the two must
        never leave a latest that claims a best the best file does not hold.
        """
        run, cfg, p = self.run, self.cfg, self.p
        assert run is not None and self.eval_sets is not None, "end_epoch runs on the chief only"
        if stats.sums["skipped"] and not stats.sums["done"]:  # nothing trained: never end such a run "finished"
            raise TrainingError(f"Every step of epoch {epoch + 1} ({stats.sums['skipped']} steps) was skipped because "
                                f"its losses or gradients were NaN/Inf, so the models did not train; check the data "
                                f"for NaN/Inf pixels (`gradprom data check`) and lower the learning rate (`optim.lr`).")
        gate = stats.gate()
        p.rows.append({**stats.train_row(epoch, p.step), **(extra or {})})
        val, samples = evaluate_split(self.models, self.eval_sets["val"], cfg, self.info, self.device, sample_count=6)
        p.rows.append({"epoch": epoch, "split": "val", "step": p.step, **val, **gate})
        run.write_epochs(p.rows)
        if self.tb is not None:
            self.tb.epoch(p.rows[-2]), self.tb.epoch(p.rows[-1])
        score = monitor_value(val, cfg)
        scaler = self.step.scaler.state_dict() if self.step.scaler is not None else None
        state = training_state(self.models, cfg, epoch, p.step, max(p.best, score), val, scaler)
        if score > p.best:
            p.best = score
            save_checkpoint(run.best_checkpoint(), state)
        save_checkpoint(run.latest_checkpoint(), state)
        if cfg.run.figures_every_epoch:
            save_sample_figure(run.figures / "samples.png", samples, cfg.task, self.class_names())
            save_curves(run.figures / "curves.png", p.rows, self.metric)
        log.info("epoch %d/%d  val psnr %.2f dB (input %.2f)  ssim %.3f  %s %.3f  gate-open %.2f  mean cos %+.3f%s",
                 epoch + 1, cfg.optim.epochs, val["psnr"], val["psnr_input"], val["ssim"], self.metric,
                 val[self.metric], gate["gate_open_rate"], gate["mean_cos"], note)
        p.epoch = epoch + 1
        return val, state

    def class_names(self) -> list[str] | None:
        """The phantoms' texture names for the figure titles (other sources: class numbers)."""
        if self.cfg.data.source != "phantoms":
            return None
        from gradprom.platform.data.phantoms import TEXTURE_NAMES
        return list(TEXTURE_NAMES[: self.cfg.data.num_classes])

    # ---- the final model (chief) ---------------------------------------------------------------------------
    def finish(self, **run_fields: Any) -> dict[str, float]:
        """Test the final model: the `test` row, the final figures, run.json's test metrics; returns them."""
        run, cfg, p = self.run, self.cfg, self.p
        assert run is not None and self.eval_sets is not None, "finish runs on the chief only"
        if self.writer is not None:
            self.writer.flush()
        test, samples = evaluate_split(self.models, self.eval_sets["test"], cfg, self.info, self.device,
                                       sample_count=6)
        p.rows = [r for r in p.rows if r["split"] != "test"]
        p.rows.append({"epoch": max(cfg.optim.epochs - 1, 0), "split": "test", "step": p.step, **test})
        run.write_epochs(p.rows)
        if self.tb is not None:
            self.tb.epoch(p.rows[-1])
            self.tb.close()
        save_sample_figure(run.figures / "samples.png", samples, cfg.task, self.class_names())
        save_curves(run.figures / "curves.png", p.rows, self.metric)
        run.write_run(test=test, nonfinite_steps=self.step.nonfinite_total, steps=p.step, **run_fields)
        return test
