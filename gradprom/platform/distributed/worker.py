"""The Ray Train worker: the GradProm step on one data-parallel rank (imported only inside Ray workers).

Per worker: read the training split through Ray Data -> build the same models as the local loop (seeded, then
broadcast from rank 0) -> resume from Ray's latest checkpoint (or the run's latest.pt) -> per epoch, the local
loop's `EpochRunner` on this rank's slice of every global batch with the fused all-reduce reducer, a check that
all ranks agree, then rank 0 (the chief) evaluates, writes the run directory and reports a checkpoint -> rank 0
tests the model. Only the batch slicing, the reducer, the agreement check and `ray.train.report` are Ray's.

Global batches: epoch e's order is the local loop's (a DataLoader over range(N) shuffled by a generator seeded
with build.epoch_seed(seed, e)) and batch k is order[kB:(k+1)B]; rank r of W takes the r-th of W equal pieces. Each
image's degradation is seeded by (seed, split, epoch, index), so the global batch, its noise and hence the
averaged gradients do not depend on the number of workers, and a 1-worker run repeats the local loop.
A store the local loop streams is walked the same way by every worker (shards.py, `distributed.sharding:
exact`); `streaming` feeds each worker its own Ray Data split instead. `<run>/workers/rank<R>.json` names the
process behind each rank and records its memory (worker_status.py).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from gradprom.platform.build import build_models, epoch_seed, steps_in_epoch
from gradprom.platform.checkpoint import load_checkpoint, save_checkpoint
from gradprom.platform.config import Config, build_config
from gradprom.platform.data.dataset import DataInfo, EnhancementDataset
from gradprom.platform.data.degradations import parse_degradation
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.distributed.agreement import broadcast_models, checksum, mismatches
from gradprom.platform.distributed.ray_data import read_train_split
from gradprom.platform.distributed.reducers import AllReduceReducer
from gradprom.platform.distributed.shards import (
    exact_steps,
    exact_stream_batches,
    local_batch,
    streamed_train_set,
    streaming_batches,
    streaming_steps,
)
from gradprom.platform.distributed.worker_status import WorkerStatus, data_memory_mb
from gradprom.platform.epoch import Batch, EpochRunner
from gradprom.platform.errors import TrainingError
from gradprom.platform.evaluate import monitor_value
from gradprom.platform.logs import file_handler, quiet_libraries
from gradprom.platform.metrics import task_metric_name
from gradprom.platform.rundir import RunDir
from gradprom.platform.step import TrainStep

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
WARM_STEPS = 3


# ---------------------------------------------------------------------------------------------------------
# data
def global_batches(n: int, cfg: Config, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches of indices, exactly as the local loop's shuffled DataLoader draws them."""
    gen = torch.Generator().manual_seed(epoch_seed(cfg, epoch))
    loader = DataLoader(range(n), batch_size=cfg.data.batch_size, shuffle=True, generator=gen, drop_last=False)
    cap = steps_in_epoch(len(loader), cfg)
    return [idx for _, idx in zip(range(cap), loader)]


def rank_batches(train_ds: EnhancementDataset, batches: list[torch.Tensor], rank: int, world: int,
                 reducer: AllReduceReducer, device: torch.device,
                 before_step: Callable[[int], None] | None = None) -> Iterator[Batch]:
    """This rank's piece of every global batch, with the reducer weighted by the piece's share (pieces can
    differ by one image); a batch too small to give every rank an image is skipped on every rank alike."""
    for k, idx in enumerate(batches):
        if len(idx) < world:
            log.info("the last batch has %d images for %d workers; skipped", len(idx), world)
            continue
        mine = torch.tensor_split(idx, world)[rank]
        batch = default_collate([train_ds[int(i)] for i in mine])
        reducer.weight = world * len(mine) / len(idx)
        if before_step is not None:
            before_step(k)
        yield batch["x_lq"].to(device), batch["x_hq"].to(device), batch["y"].to(device)


def follow_verbosity(run_path: Path | None) -> None:
    """The driver's -q/-v in this worker (Ray Train set up its loggers before the train function runs); the chief
    also appends to the run's log.txt (the worker process ends with the run, so the handler is never removed)."""
    import ray.data  # noqa: F401 - installs its console handler, which quiet_libraries then filters

    quiet_libraries(root=True)
    if run_path is not None:
        handler = file_handler(Path(run_path) / "log.txt")
        for lg in (logging.getLogger(), logging.getLogger("ray.train"), logging.getLogger("ray.data")):
            lg.addHandler(handler)  # ray.train and ray.data do not propagate to the root


def failure_hook(fail: dict[str, Any] | None, rank: int, epoch: int) -> Callable[[int], None] | None:
    """Tests' fault injection (`train_on_ray(inject_failure=...)`), once per run (a marker file remembers it):
    at that rank, epoch and step, `kind` "raise" (default) raises; "pause" sleeps `seconds` (the test kills the
    process from outside meanwhile); "hang" stops the whole process (SIGSTOP), so it no longer answers Ray
    Train's health check. None in production."""
    if not fail or rank != fail["rank"] or epoch != fail["epoch"]:
        return None

    def hook(k: int) -> None:
        if k == fail["step"] and not Path(fail["marker"]).exists():
            Path(fail["marker"]).write_text(f"{os.getpid()}\n")
            kind = fail.get("kind", "raise")
            if kind == "pause":
                time.sleep(float(fail.get("seconds", 120)))
            elif kind == "hang":
                os.kill(os.getpid(), signal.SIGSTOP)
            else:
                raise RuntimeError(f"injected failure on rank {rank} at epoch {epoch}, step {k}")
    return hook


# ---------------------------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: one rank of a GradProm run (see the module docstring)."""
    import ray.train
    from ray.train import Checkpoint

    cfg = build_config(config["cfg"], source="Ray Train run")
    run = RunDir(config["run_path"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    chief = rank == 0
    follow_verbosity(run.path if chief else None)
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
    status = WorkerStatus(run.path, rank, world)  # before any data is read: the memory baseline

    # --- data (distributed.sharding, see shards.py): in memory, one seeded stream per worker, or a Ray Data
    #     streaming split; rank 0 also evaluates ------------------------------------------------------------------
    spec = config["train"]
    train_ds = stream_ds = shard = None
    if spec.get("sharding") == "streaming":
        shard = ray.train.get_dataset_shard("train")
    elif spec.get("stream"):
        stream_ds = streamed_train_set(cfg, degradation)
    else:
        train_set = read_train_split(ray.train.get_dataset_shard("train"), spec, cfg.task)
        train_ds = EnhancementDataset(train_set, degradation, cfg.task, cfg.seed, "train")
    eval_sets = build_datasets(cfg)[0] if chief else None

    # --- models, the step with the fused all-reduce reducer, the shared epoch runner ---------------------------
    models = build_models(cfg, info, degradation.scale, device)
    reducer = AllReduceReducer()
    step = TrainStep.from_config(cfg, models.enhancer, models.recognizer, models.opt_e, models.opt_r,
                                 reducer=reducer, device=device)
    runner = EpochRunner(cfg, models, step, info, device, run=run if chief else None, eval_sets=eval_sets,
                         progress=False)
    if chief and cfg.model.recognizer_norm == "batch" and world > 1:
        log.warning("model.recognizer_norm=batch: batch statistics are computed per worker (%d images), so "
                    "results depend on the number of workers; use instance norm for worker-count independence",
                    max(cfg.data.batch_size // world, 1))

    # --- resume: Ray's latest checkpoint (after a failure, or a resumed run), else the run's latest.pt -------
    state, where = None, ""
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / STATE_FILE, map_location=device)
        where = "Ray Train checkpoint"
    elif config["resume"] and run.latest_checkpoint().is_file():
        state = load_checkpoint(run.latest_checkpoint(), map_location=device)
        where = str(run.latest_checkpoint())
    runner.resume(state, where)
    status.write(start_epoch=runner.p.epoch)  # > 0 after a restart from a checkpoint
    broadcast_models(models, device)
    metric = task_metric_name(cfg.task)
    per_step_check = cfg.distributed.sync_check == "step"
    warm = [0]  # steps this process has taken (its memory baseline is taken after WARM_STEPS)

    for epoch in runner.epochs():
        # --- train: this rank's piece of every global batch ---------------------------------------------------
        gates: list[float] = []
        weight_bad = [0]

        def after_step(res, gates=gates, weight_bad=weight_bad, warm=warm) -> None:
            warm[0] += 1
            if warm[0] == WARM_STEPS:  # torch's, gloo's and the allocator's first-step buffers are in place
                status.write(data_warm_mb=data_memory_mb())
            gates.append(res.gate_open)
            if per_step_check:
                weight_bad[0] += mismatches(torch.tensor([checksum(models.enhancer, models.recognizer)],
                                                         device=device), world)

        t_epoch, allreduce_s0 = time.monotonic(), reducer.seconds
        hook = failure_hook(config.get("inject_failure"), rank, epoch)
        if shard is not None:
            n_steps = streaming_steps(spec, cfg, world)
            pieces = streaming_batches(shard, spec, cfg, degradation, epoch, world, reducer, device, hook)
            samples = n_steps * local_batch(cfg, world) * world
        elif stream_ds is not None:
            n_steps = exact_steps(stream_ds, cfg)
            pieces = exact_stream_batches(stream_ds, cfg, epoch, rank, world, reducer, device, hook)
            samples = min(len(stream_ds), n_steps * cfg.data.batch_size)
        else:
            train_ds.set_epoch(epoch)
            batches = global_batches(len(train_ds), cfg, epoch)
            pieces = rank_batches(train_ds, batches, rank, world, reducer, device, hook)
            n_steps, samples = len(batches), sum(len(b) for b in batches)
        stats = runner.train_epoch(epoch, pieces, n_steps, after_step)
        peaks = status.fields.setdefault("train_peaks_mb", [])  # the data-memory peak so far, after each epoch
        peaks.append(max(status.data_peak, data_memory_mb()))
        status.write(epoch=epoch, step=runner.p.step)

        # --- agreement: every rank took the same gate decisions and holds the same weights ----------------------
        check = {"gate_mismatches": 0, "weight_mismatches": weight_bad[0]}
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
        elapsed = max(time.monotonic() - t_epoch, 1e-9)
        peak = torch.tensor([status.fields["peak_rss_mb"]], dtype=torch.float64, device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)  # the largest worker's peak resident memory
        extra = {**check, "workers": world, "peak_rss_mb": float(peak), "samples_per_s": samples / elapsed,
                 "allreduce_share": (reducer.seconds - allreduce_s0) / elapsed}

        # --- rank 0: evaluate, write the run directory, checkpoint; every rank reports ---------------------------
        val: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if chief:
                note = (f"  ({world} workers, {extra['samples_per_s']:.0f} samples/s, all-reduce "
                        f"{100 * extra['allreduce_share']:.1f}% of the epoch)")
                val, state = runner.end_epoch(epoch, stats, extra, note=note)
                save_checkpoint(Path(tmp) / STATE_FILE, state)
                checkpoint = Checkpoint.from_directory(tmp)
            holder = [val]
            dist.broadcast_object_list(holder, src=0)  # every rank reports rank 0's numbers
            val = holder[0]
            if not chief:
                runner.p.epoch, runner.p.best = epoch + 1, max(runner.p.best, monitor_value(val, cfg))
            gate = stats.gate()
            report = {"epoch": epoch, "step": runner.p.step, "psnr": val["psnr"], "ssim": val["ssim"],
                      "task": val[metric], metric: val[metric], "loss_e": stats.mean("loss_e"),
                      "loss_r": stats.mean("loss_r"), "gate_open_rate": gate["gate_open_rate"],
                      "mean_cos": gate["mean_cos"], **extra}
            del report["workers"]
            ray.train.report(report, checkpoint=checkpoint,
                             checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}" if checkpoint else None)

    # --- rank 0 tests the final model --------------------------------------------------------------------------
    if chief:
        runner.finish(workers=world)
