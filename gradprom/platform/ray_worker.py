"""The Ray Train worker: the GradProm step on one data-parallel rank (imported only inside Ray workers).

Per worker: read the training split through Ray Data -> build the same models as the local loop (seeded, then
broadcast from rank 0) -> resume from Ray's latest checkpoint (or the run's latest.pt) -> per epoch: take this
rank's slice of every global batch, run `TrainStep` with the fused all-reduce reducer, check that all ranks
agree, then rank 0 evaluates, writes the run directory and reports a checkpoint -> rank 0 tests the model.

Global batches: epoch e's order is the local loop's (a DataLoader over range(N) shuffled by a generator seeded
with seed * 100003 + e) and batch k is order[kB:(k+1)B]; rank r of W takes the r-th of W equal pieces. Each
image's degradation is seeded by (seed, split, epoch, index), so the global batch, its noise and hence the
averaged gradients do not depend on the number of workers, and a 1-worker run repeats the local loop.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from .checkpoint import load_checkpoint, save_checkpoint
from .config import build_config
from .datasets import DataInfo, EnhancementDataset, ImageSet, build_datasets
from .degradations import parse_degradation
from .errors import TrainingError
from .figures import save_curves, save_samples
from .loop import (EpochStats, build_models, evaluate_split, finish_test, load_training_state, monitor_value,
                   training_state)
from .metrics import task_metric_name
from .reducers import AllReduceReducer
from .rundir import RunDir, StepWriter
from .step import TrainStep
from .store import decode_images, decode_masks

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


# ---------------------------------------------------------------------------------------------------------
# data
def read_train_split(it, spec: dict[str, Any], task: str) -> ImageSet:
    """Decode the Ray Data stream of the training split into memory, rows in split order.

    Rows carry their split position either as an `index` column (in-memory sources) or as the part file they
    came from (`path`, stores): rows of one file arrive in file order, and files are placed by the manifest.
    """
    shape = tuple(spec["shape"])
    tables = list(it.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))
    rows = sum(t.num_rows for t in tables)
    c, h, w = shape
    images = np.empty((rows, c, h, w), np.float32)
    targets = np.empty(rows, np.int64) if task == "classification" else np.empty((rows, h, w), np.int64)
    index = np.empty(rows, np.int64)
    seen: dict[str, int] = {}
    off = 0
    for t in tables:
        k = t.num_rows
        decode_images(t, shape, "training split (Ray Data)", out=images[off:off + k])
        targets[off:off + k] = (t.column("label").to_numpy(zero_copy_only=False) if task == "classification"
                                else decode_masks(t, shape, "training split (Ray Data)"))
        if "index" in t.column_names:
            index[off:off + k] = t.column("index").to_numpy(zero_copy_only=False)
        else:
            for j, p in enumerate(t.column("path").to_pylist()):
                key = os.path.normpath(p)
                index[off + j] = spec["path_start"][key] + seen.get(key, 0)
                seen[key] = seen.get(key, 0) + 1
        off += k
    order = np.argsort(index, kind="stable")
    if rows != spec["rows"] or not np.array_equal(index[order], np.arange(rows)):
        raise TrainingError(f"The training split read through Ray Data has {rows} rows (expected {spec['rows']}) "
                            f"or misses positions; the store changed while training?")
    images, targets = images[order], targets[order]
    if spec.get("holdout") is not None:  # a store without a val split: the same seeded hold-out as the local loop
        keep = ~np.asarray(spec["holdout"], bool)
        images, targets = images[keep], targets[keep]
    labels, masks = (targets, None) if task == "classification" else (None, targets)
    return ImageSet(images, labels, masks)


def global_batches(n: int, cfg, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches of indices, exactly as the local loop's shuffled DataLoader draws them."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    loader = DataLoader(range(n), batch_size=cfg.data.batch_size, shuffle=True, generator=gen, drop_last=False)
    cap = len(loader) if cfg.optim.max_steps_per_epoch is None else min(len(loader), cfg.optim.max_steps_per_epoch)
    out = []
    for i, idx in enumerate(loader):
        if i >= cap:
            break
        out.append(idx)
    return out


# ---------------------------------------------------------------------------------------------------------
# agreement across ranks
def checksum(enhancer: torch.nn.Module, recognizer: torch.nn.Module) -> int:
    """64 bits of a hash of E's weights and buffers and R's weights (bit-identical <=> equal, practically).

    R's buffers are left out: batch-norm running statistics are per worker (each sees its own images).
    """
    h = hashlib.blake2b(digest_size=8)
    for t in [*enhancer.state_dict().values(), *recognizer.parameters()]:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def gather(t: torch.Tensor, world: int) -> torch.Tensor:
    """all_gather of a 1-D tensor -> (world, len)."""
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return torch.stack(out)


def mismatches(values: torch.Tensor, world: int) -> int:
    """How many entries differ between some rank and rank 0 (NaN == NaN)."""
    g = gather(values, world)
    same = (g == g[0]) | (torch.isnan(g) & torch.isnan(g[0])) if g.is_floating_point() else g == g[0]
    return int((~same.all(0)).sum())


def broadcast_models(models, device: torch.device) -> None:
    """Rank 0's weights and buffers to every rank (seeded init is identical already; this makes it certain)."""
    for m in (models.enhancer, models.recognizer):
        for t in m.state_dict().values():
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: one rank of a GradProm run (see the module docstring)."""
    import ray.train
    from ray.train import Checkpoint

    cfg = build_config(config["cfg"], source="Ray Train run")
    run = RunDir(config["run_path"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    if cfg.distributed.gpus_per_worker > 0:
        from ray.train.torch import get_device
        device = get_device()
        torch.cuda.set_device(device)  # NCCL collectives of Python objects use the current device
    else:
        device = torch.device("cpu")
    info = DataInfo(**config["info"])
    degradation = parse_degradation(cfg.data.degradation)

    # --- data: this worker's view of the training split through Ray Data; rank 0 also evaluates ------------
    train_set = read_train_split(ray.train.get_dataset_shard("train"), config["train"], cfg.task)
    train_ds = EnhancementDataset(train_set, degradation, cfg.task, cfg.seed, "train")
    eval_sets = build_datasets(cfg)[0] if rank == 0 else None

    # --- models, the step with the fused all-reduce reducer ---------------------------------------------------
    models = build_models(cfg, info, degradation.scale, device)
    reducer = AllReduceReducer()
    step = TrainStep.from_config(cfg, models.enhancer, models.recognizer, models.opt_e, models.opt_r,
                                 reducer=reducer, device=device)
    if rank == 0 and cfg.model.recognizer_norm == "batch" and world > 1:
        log.warning("model.recognizer_norm=batch: batch statistics are computed per worker (%d images), so "
                    "results depend on the number of workers; use instance norm for worker-count independence",
                    max(cfg.data.batch_size // world, 1))

    # --- resume: Ray's latest checkpoint (after a failure, or a resumed run), else the run's latest.pt -------
    start_epoch, global_step, best, state = 0, 0, -math.inf, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / STATE_FILE, map_location=device)
        where = "Ray Train checkpoint"
    elif config["resume"] and run.latest_checkpoint().is_file():
        state = load_checkpoint(run.latest_checkpoint(), map_location=device)
        where = str(run.latest_checkpoint())
    if state is not None:
        load_training_state(models, state, run.path, Path(where))
        start_epoch, global_step, best = state["epoch"] + 1, state["step"], state["best"]
    broadcast_models(models, device)
    step.steps_done = global_step

    epoch_rows: list[dict[str, Any]] = []
    writer = None
    if rank == 0:
        epoch_rows = [r for r in run.read_epochs() if state is not None and r["epoch"] <= state["epoch"]
                      and r["split"] != "test"]
        run.truncate_steps(global_step)
        writer = StepWriter(run.steps, cfg.run.flush_seconds)
        if state is not None:
            log.info("rank 0 resuming %s from epoch %d (step %d, %s)", run.path, start_epoch, global_step, where)
    fail = config.get("inject_failure")
    metric = task_metric_name(cfg.task)
    per_step_check = cfg.distributed.sync_check == "step"
    t0 = time.monotonic()

    for epoch in range(start_epoch, cfg.optim.epochs):
        # --- train: this rank's piece of every global batch ---------------------------------------------------
        train_ds.set_epoch(epoch)
        stats, gates, weight_bad = EpochStats(), [], 0
        t_epoch, allreduce_s0 = time.monotonic(), reducer.seconds
        batches = global_batches(len(train_ds), cfg, epoch)
        for k, idx in enumerate(batches):
            if len(idx) < world:  # too small to give every rank an image: the same skip on every rank
                log.info("epoch %d: the last batch has %d images for %d workers; skipped", epoch, len(idx), world)
                continue
            mine = torch.tensor_split(idx, world)[rank]
            batch = default_collate([train_ds[int(i)] for i in mine])
            reducer.weight = world * len(mine) / len(idx)
            if fail and rank == fail["rank"] and epoch == fail["epoch"] and k == fail["step"] \
                    and not Path(fail["marker"]).exists():
                Path(fail["marker"]).write_text("failed once\n")
                raise RuntimeError(f"injected failure on rank {rank} at epoch {epoch}, step {k}")
            res = step(batch["x_lq"].to(device), batch["x_hq"].to(device), batch["y"].to(device))
            global_step += 1
            stats.add(res)
            gates.append(res.gate_open)
            if per_step_check:
                weight_bad += mismatches(torch.tensor([checksum(models.enhancer, models.recognizer)],
                                                      device=device), world)
            if writer is not None:
                writer.append({"step": global_step, "epoch": epoch, **res.row(), "time": time.monotonic() - t0})
        # --- agreement: every rank took the same gate decisions and holds the same weights ----------------------
        check = {"gate_mismatches": 0, "weight_mismatches": weight_bad}
        if cfg.distributed.sync_check != "off":
            check["gate_mismatches"] = mismatches(torch.tensor(gates or [0.0], dtype=torch.float64, device=device),
                                                  world)
            if not per_step_check:
                check["weight_mismatches"] = mismatches(
                    torch.tensor([checksum(models.enhancer, models.recognizer)], device=device), world)
            if check["gate_mismatches"] or check["weight_mismatches"]:
                raise TrainingError(f"Workers disagree after epoch {epoch}: {check['gate_mismatches']} gate decisions "
                                    f"and {check['weight_mismatches']} weight checks differ from rank 0; the "
                                    f"reducer is not averaging the same buffer on every rank.")
        row = {**stats.train_row(epoch, global_step), **check, "workers": world,
               "samples_per_s": sum(len(b) for b in batches) / max(time.monotonic() - t_epoch, 1e-9),
               "allreduce_share": (reducer.seconds - allreduce_s0) / max(time.monotonic() - t_epoch, 1e-9)}

        # --- rank 0: evaluate, write the run directory, checkpoint; every rank reports ---------------------------
        val: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                writer.flush()
                val, samples = evaluate_split(models, eval_sets["val"], cfg, info, device, sample_count=6)
                epoch_rows.append(row)
                epoch_rows.append({"epoch": epoch, "split": "val", "step": global_step, **val, **stats.gate()})
                run.write_epochs(epoch_rows)
                score = monitor_value(val, cfg)
                state = training_state(models, cfg, epoch, global_step, max(best, score), val)
                save_checkpoint(Path(tmp) / STATE_FILE, state)
                save_checkpoint(run.latest_checkpoint(), state)
                if score > best:
                    best = score
                    save_checkpoint(run.best_checkpoint(), state)
                if cfg.run.figures_every_epoch:
                    save_samples(run.figures / "samples.png", samples["degraded"], samples["enhanced"],
                                 samples["clean"])
                    save_curves(run.figures / "curves.png", epoch_rows, metric)
                checkpoint = Checkpoint.from_directory(tmp)
                log.info("epoch %d/%d  val psnr %.2f dB  ssim %.3f  %s %.3f  gate-open %.2f  mean cos %+.3f  "
                         "(%d workers, %.0f samples/s, all-reduce %.1f%% of the epoch)", epoch + 1, cfg.optim.epochs,
                         val["psnr"], val["ssim"], metric, val[metric], row["gate_open_rate"], row["mean_cos"], world,
                         row["samples_per_s"], 100 * row["allreduce_share"])
            holder = [val]
            dist.broadcast_object_list(holder, src=0)  # every rank reports rank 0's numbers
            val = holder[0]
            best = max(best, monitor_value(val, cfg))
            report = {"epoch": epoch, "step": global_step, "psnr": val["psnr"], "ssim": val["ssim"],
                      "task": val[metric], metric: val[metric], "loss_e": row["loss_e"], "loss_r": row["loss_r"],
                      "gate_open_rate": row["gate_open_rate"], "mean_cos": row["mean_cos"],
                      "gate_mismatches": check["gate_mismatches"], "weight_mismatches": check["weight_mismatches"],
                      "samples_per_s": row["samples_per_s"], "allreduce_share": row["allreduce_share"]}
            ray.train.report(report, checkpoint=checkpoint,
                             checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}" if checkpoint else None)

    # --- rank 0 tests the final model --------------------------------------------------------------------------
    if rank == 0:
        writer.flush()
        test = finish_test(run, models, eval_sets["test"], cfg, info, device, epoch_rows, global_step)
        run.write_run(test=test, nonfinite_steps=step.nonfinite_total, steps=global_step, workers=world)
