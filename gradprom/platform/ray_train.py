"""The Ray Train runner beside the local loop: `gradprom train --workers N [--gpus-per-worker G] [--address A]`.

Thin driver, no training logic (that is `ray_worker.train_loop_per_worker`, which calls the same TrainStep):
  1) validate the config and the data here, before any Ray process starts (bad input fails in seconds)
  2) connect: no address -> a private local instance (`address="local"`, bounded CPUs, no dashboard, so a
     stray cluster on this machine is never joined); "auto" or HOST:PORT -> join it. Reaching the cluster and
     waiting for it to offer the workers' resources are both bounded by `distributed.timeout_s`
  3) TorchTrainer(ScalingConfig, RunConfig(storage_path=<run>, name="ray", CheckpointConfig(best K by a metric),
     FailureConfig(max_failures))) with the training split as a Ray Dataset: the store's Parquet part files
     (`ray.data.read_parquet`) or, for the phantoms, an .npz or an image folder, the split converted in memory
     into rows of the store's schema (`ray.data.from_arrow`), so the workers decode one format
  4) the run directory is a local run's (run.json kind "ray-train", config.yaml, steps/, epochs.parquet,
     checkpoints/latest.pt + best.pt, figures/) plus `ray/`: Ray's checkpoint snapshot and its best-K
     checkpoint directories. Resuming a run by its directory lets Ray find that snapshot, and the workers
     continue from the latest checkpoint.

Importing this module does not import Ray; `train_on_ray` does.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .config import Config, save_config
from .datasets import EnhancementDataset, ImageSet, build_datasets
from .errors import ConfigError, GradPromError, TrainingError
from .loop import default_run_name
from .rundir import RunDir, now_iso, versions
from .store import Store, is_store
from .store_data import holdout_mask

log = logging.getLogger(__name__)
RAY_DIR = "ray"  # Ray Train's experiment directory inside the run directory
STORE_COLUMNS = ["image", "dtype", "channels", "height", "width", "label", "mask"]


class ClusterError(GradPromError):
    """The Ray cluster cannot be reached or cannot place the requested workers."""


# ---------------------------------------------------------------------------------------------------------
# the training split as a Ray Dataset
def train_source(cfg: Config, train: EnhancementDataset) -> tuple[dict[str, Any], Any]:
    """(spec for the workers, a function making the Ray Dataset) of the training split."""
    src = cfg.data.source
    if src != "phantoms" and is_store(src):
        store = Store(src)
        sites = cfg.data.sites
        parts = store.select("train", sites)
        paths = [os.path.normpath(os.path.abspath(p)) for p in store.part_paths("train", sites)]
        starts = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).tolist()
        rows = int(starts[-1])
        holdout = None
        if not store.select("val", sites):  # the local loop's seeded hold-out of train as validation
            holdout = holdout_mask(rows, cfg.data.val_fraction, cfg.seed).tolist()
        spec = {"shape": list(store.shape), "rows": rows, "path_start": dict(zip(paths, starts)), "holdout": holdout}
        columns = [c for c in STORE_COLUMNS if c != ("mask" if cfg.task == "classification" else "label")]

        def make():
            import ray.data
            return ray.data.read_parquet(paths, columns=columns, include_paths=True)
        return spec, make

    # in memory (phantoms, .npz, image folder): rows in the store's schema plus their position
    table = memory_table(train.data, cfg.task)
    spec = {"shape": list(train.data.images.shape[1:]), "rows": len(train.data), "holdout": None}

    def make():
        import ray.data
        return ray.data.from_arrow(table)
    return spec, make


def memory_table(data: ImageSet, task: str) -> pa.Table:
    """An in-memory split as rows of the store's schema (float32 pixels) plus an `index` column."""
    n = len(data)
    c, h, w = data.images.shape[1:]
    table = pa.table({
        "image": pa.array([img.tobytes() for img in np.ascontiguousarray(data.images, np.float32)], pa.binary()),
        "dtype": pa.array(["float32"] * n), "channels": pa.array([c] * n, pa.int32()),
        "height": pa.array([h] * n, pa.int32()), "width": pa.array([w] * n, pa.int32()),
        "index": pa.array(np.arange(n, dtype=np.int64)),
    })
    if task == "classification":
        return table.append_column("label", pa.array(data.labels.astype(np.int64)))
    return table.append_column("mask", pa.array([m.astype(np.uint8).tobytes() for m in data.masks], pa.binary()))


# ---------------------------------------------------------------------------------------------------------
# the cluster
def _probe(address: str, timeout_s: float) -> None:
    """Open a TCP connection to HOST:PORT (fails in at most `timeout_s`, unlike a hanging ray.init)."""
    addr = address.removeprefix("ray://")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"config field `distributed.address`: got {address!r}; expected 'auto', HOST:PORT "
                          f"(the head's GCS port, e.g. HEAD_HOST:6379) or ray://HOST:PORT, or leave it out to "
                          f"start a local Ray instance.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"Cannot reach the Ray cluster at {address!r} within {timeout_s:g} s ({e.strerror or e}). "
                           f"Check the address and that `ray start --head` runs there, or leave out --address to "
                           f"start a local Ray instance.") from None


def connect(cfg: Config) -> bool:
    """Start or join Ray as `distributed.address` says; True when this call did (so it shuts Ray down)."""
    import ray

    d = cfg.distributed
    if ray.is_initialized():  # the caller (a test, a notebook) already chose the cluster
        log.info("using the Ray instance this process is already connected to (distributed.address ignored)")
        return False
    if d.address is None:
        cpus = d.num_cpus or math.ceil(d.workers * d.cpus_per_worker) + 1  # + 1 for Ray Data's read tasks
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=True)
        return True
    if d.address != "auto":
        _probe(d.address, min(d.timeout_s, 10.0))
    box: dict[str, BaseException | None] = {"error": None}

    def _init() -> None:
        try:
            ray.init(address=d.address, configure_logging=False, log_to_driver=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            box["error"] = e

    t = threading.Thread(target=_init, daemon=True)
    t.start()
    t.join(d.timeout_s)
    if t.is_alive():
        raise ClusterError(f"Joining the Ray cluster at {d.address!r} did not finish within {d.timeout_s:g} s "
                           f"(distributed.timeout_s); is it a Ray head of the same Ray version ({ray.__version__})?")
    if box["error"] is not None:
        e = box["error"]
        raise ClusterError(f"Cannot join the Ray cluster at {d.address!r}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''} Start one with `ray start --head`, or leave "
                           f"out --address to start a local Ray instance.") from None
    return True


def wait_for_resources(cfg: Config) -> None:
    """Wait up to `distributed.timeout_s` for the cluster to offer the workers' CPUs and GPUs, else fail."""
    import ray

    d = cfg.distributed
    need_cpu, need_gpu = d.workers * d.cpus_per_worker, d.workers * d.gpus_per_worker
    deadline = time.monotonic() + d.timeout_s
    while True:
        res = ray.cluster_resources()
        cpu, gpu = res.get("CPU", 0.0), res.get("GPU", 0.0)
        if cpu >= need_cpu and gpu >= need_gpu:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"The Ray cluster offers {cpu:g} CPUs and {gpu:g} GPUs, but {d.workers} workers need {need_cpu:g} CPUs "
                f"({d.cpus_per_worker:g} each) and {need_gpu:g} GPUs ({d.gpus_per_worker:g} each); waited "
                f"{d.timeout_s:g} s (distributed.timeout_s). Use fewer --workers or --gpus-per-worker, or add nodes.")
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def _user_error(err: BaseException) -> GradPromError | None:
    """The GradPromError a worker raised, found inside Ray's wrappers (None when it was something else)."""
    causes = list(getattr(err, "worker_failures", {}).values()) + [getattr(err, "controller_failure", None)]
    seen: set[int] = set()
    while causes:
        e = causes.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, GradPromError):
            msg = str(e.args[0]) if e.args else str(e)
            for cls in (ConfigError, TrainingError, ClusterError):
                if isinstance(e, cls):
                    return cls(msg)
            from .errors import DataError
            return DataError(msg) if isinstance(e, DataError) else GradPromError(msg)
        causes += [getattr(e, "cause", None), e.__cause__]
    return None


def _failure_summary(err: BaseException) -> str:
    failures = getattr(err, "worker_failures", None) or {}
    if failures:
        rank, e = sorted(failures.items())[0]
        text = str(getattr(e, "cause", None) or e).strip().splitlines()
        return f"rank {rank}: {text[-1] if text else type(e).__name__}"
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


# ---------------------------------------------------------------------------------------------------------
def train_on_ray(cfg: Config, *, resume: bool = False, run_path: str | Path | None = None,
                 inject_failure: dict[str, Any] | None = None, callbacks: list | None = None) -> Path:
    """Train E and R on `distributed.workers` Ray Train workers; returns the run directory.

    :param callbacks: Ray Train callbacks for its RunConfig, e.g. Tune's `TuneReportCallback` when a Tune
        trial drives the run (the workers' per-epoch reports then reach Tune and its scheduler).

    :param inject_failure: tests only: {"rank", "epoch", "step", "marker"} makes that rank raise once (the
        marker file remembers it), to exercise the restart from the latest checkpoint.
    """
    d = cfg.distributed
    # --- 1) validate before starting anything ----------------------------------------------------------------
    if d.workers < 1:
        raise ConfigError(f"config field `distributed.workers`: got {d.workers}; Ray Train needs at least 1 worker "
                          f"(0 means the local loop).")
    if cfg.data.batch_size < d.workers:
        raise ConfigError(f"config field `data.batch_size`: got {cfg.data.batch_size}, fewer than the {d.workers} "
                          f"workers; the global batch is split across them, so it needs at least one image each.")
    if cfg.run.device == "cuda" and d.gpus_per_worker <= 0:
        raise ConfigError("config field `run.device`: 'cuda' with Ray Train needs --gpus-per-worker > 0.")
    run = RunDir(Path(run_path or Path(cfg.run.out) / (cfg.run.name or default_run_name(cfg))).resolve())
    if run.exists() and not resume:
        raise ConfigError(f"Run directory {str(run.path)!r} already holds a run; continue it with --resume, "
                          f"or choose another --name / --out.")
    datasets, info, degradation = build_datasets(cfg)  # every data check of the local loop (DataError)
    if not isinstance(datasets["train"], EnhancementDataset):
        log.info("the store is read by Ray Data on every worker; its train split is held in memory there")
    spec, make_dataset = train_source(cfg, datasets["train"])

    # --- 2) the cluster --------------------------------------------------------------------------------------
    started = connect(cfg)
    try:
        import ray
        import ray.data
        from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.train.v2.api.exceptions import TrainingFailedError

        from .ray_worker import train_loop_per_worker

        wait_for_resources(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = False

        # --- 3) the run directory, then Ray Train --------------------------------------------------------------
        run.create()
        started_at = run.read_run().get("start") if resume else None
        use_gpu = d.gpus_per_worker > 0
        run.write_run(name=run.path.name, kind="ray-train", status="running", start=started_at or now_iso(), end=None,
                      seed=cfg.seed, task=cfg.task, strategy=cfg.gradprom.strategy, tau=cfg.gradprom.tau,
                      **cfg.gate_variant,
                      data=cfg.data.source, degradation=str(degradation),
                      device=f"{'cuda (nccl)' if use_gpu else 'cpu (gloo)'} x {d.workers} workers",
                      workers=d.workers, address=d.address or "local",
                      versions={**versions(), "ray": ray.__version__}, error=None)
        save_config(cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": None})}), run.config_yaml)
        resources = {"CPU": d.cpus_per_worker, **({"GPU": d.gpus_per_worker} if use_gpu else {})}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.to_dict(), "run_path": str(run.path), "info": vars(info).copy(),
                               "train": spec, "resume": resume, "inject_failure": inject_failure},
            scaling_config=ScalingConfig(num_workers=d.workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(
                name=RAY_DIR, storage_path=str(run.path),
                checkpoint_config=CheckpointConfig(num_to_keep=d.keep_checkpoints,
                                                   checkpoint_score_attribute=d.checkpoint_metric,
                                                   checkpoint_score_order=d.checkpoint_order),
                failure_config=FailureConfig(max_failures=d.max_failures), callbacks=callbacks),
            datasets={"train": make_dataset()},
            # every worker reads the whole split and takes its piece of each global batch (see ray_worker.py):
            # Ray Data's streaming split hands blocks to whichever worker asks first, so batches would depend
            # on timing and on the number of workers
            dataset_config=DataConfig(datasets_to_split=[], execution_options=_ordered()),
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as e:
            user = _user_error(e)
            if user is not None:
                raise user from None
            raise TrainingError(f"The Ray Train run {str(run.path)!r} failed after {max(d.max_failures, 0)} "
                                f"restart(s) (distributed.max_failures): {_failure_summary(e)}. The workers' logs "
                                f"are under Ray's session directory (/tmp/ray/session_latest/logs).") from None
        best = [{"path": c.path, d.checkpoint_metric: m.get(d.checkpoint_metric)}
                for c, m in (result.best_checkpoints or [])]
        run.write_run(status="finished", end=now_iso(), ray_checkpoints=best)
        return run.path
    except KeyboardInterrupt:
        if run.exists():
            run.write_run(status="stopped", end=now_iso(), error="interrupted by the user")
        raise
    except BaseException as e:
        if run.exists():
            run.write_run(status="failed", end=now_iso(), error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if started:
            import ray
            ray.shutdown()


def _ordered():
    """Ray Data ingest options that keep the blocks in input order (row positions stay meaningful)."""
    from ray.train import DataConfig

    opts = DataConfig.default_ingest_options()
    opts.preserve_order = True
    return opts
