"""The Ray Train runner beside the local loop: `gradprom train --workers N [--gpus-per-worker G] [--address A]`.

Thin driver, no training logic (that is `worker.train_loop_per_worker`, which runs the local loop's EpochRunner):
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
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradprom.platform.build import default_run_name
from gradprom.platform.config import Config, save_config
from gradprom.platform.data.dataset import EnhancementDataset
from gradprom.platform.data.holdout import HOLDOUT_RULE
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.distributed.cluster import ClusterError, connect_for, wait_for_resources
from gradprom.platform.distributed.ray_data import train_source
from gradprom.platform.distributed.worker_status import read_statuses
from gradprom.platform.errors import ConfigError, DataError, GradPromError, TrainingError
from gradprom.platform.lifecycle import RunLifecycle
from gradprom.platform.loop import saved_config
from gradprom.platform.rundir import RunDir, versions

log = logging.getLogger(__name__)
RAY_DIR = "ray"  # Ray Train's experiment directory inside the run directory


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
            return DataError(msg) if isinstance(e, DataError) else GradPromError(msg)
        causes += [getattr(e, "cause", None), e.__cause__]
    return None


def _failure_summary(err: BaseException, run_path: Path, d: Any) -> str:
    from ray.train.v2._internal.exceptions import WorkerHealthCheckTimeoutError

    failures = getattr(err, "worker_failures", None) or {}
    hung = sorted(r for r, e in failures.items() if isinstance(e, WorkerHealthCheckTimeoutError))
    if hung:  # name the process: rank, pid and host from the worker's status file
        who = read_statuses(run_path).get(hung[0], {})
        return (f"rank {hung[0]} (pid {who.get('pid', '?')} on {who.get('hostname', '?')}, node "
                f"{str(who.get('node_id', '?'))[:12]}) answered no health check for more than {d.health_timeout_s:g} s "
                f"(distributed.health_timeout_s) and was declared hung")
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
    life = RunLifecycle(run, resume, resume_hint=f"`gradprom train --resume {run.path} --workers {d.workers}`")
    log.info("loading data (%s)…", cfg.data.source)
    datasets, info, degradation = build_datasets(cfg)  # every data check of the local loop (DataError)
    spec, make_dataset = train_source(cfg, datasets["train"])
    if not isinstance(datasets["train"], EnhancementDataset) and not spec["stream"] and d.sharding == "exact":
        log.info("the store is read by Ray Data on every worker; its train split is held in memory there")

    # --- 2) the cluster --------------------------------------------------------------------------------------
    started = connect_for(cfg)
    try:
        import ray
        import ray.data
        from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.train.v2.api.exceptions import TrainingFailedError

        from gradprom.platform.distributed.worker import train_loop_per_worker

        wait_for_resources(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = False

        # --- 3) the run directory, then Ray Train --------------------------------------------------------------
        use_gpu = d.gpus_per_worker > 0
        header = dict(seed=cfg.seed, task=cfg.task, strategy=cfg.gradprom.strategy, tau=cfg.gradprom.tau,
                      **cfg.gate_variant, data=cfg.data.source, degradation=str(degradation), holdout=HOLDOUT_RULE,
                      device=f"{'cuda (nccl)' if use_gpu else 'cpu (gloo)'} x {d.workers} workers",
                      workers=d.workers, address=d.address or "local", sharding=d.sharding,
                      sharding_note=SHARDING_NOTE[d.sharding], versions={**versions(), "ray": ray.__version__})
        with life.running("ray-train", header, save=lambda path: save_config(saved_config(cfg), path)):
            resources = {"CPU": d.cpus_per_worker, **({"GPU": d.gpus_per_worker} if use_gpu else {})}
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"cfg": cfg.to_dict(), "run_path": str(run.path), "info": vars(info).copy(),
                                   "train": spec, "resume": resume, "inject_failure": inject_failure},
                scaling_config=ScalingConfig(num_workers=d.workers, use_gpu=use_gpu, resources_per_worker=resources,
                                             placement_strategy=d.placement),
                run_config=RunConfig(
                    name=RAY_DIR, storage_path=str(run.path),
                    checkpoint_config=CheckpointConfig(num_to_keep=d.keep_checkpoints,
                                                       checkpoint_score_attribute=d.checkpoint_metric,
                                                       checkpoint_score_order=d.checkpoint_order),
                    failure_config=FailureConfig(max_failures=d.max_failures), callbacks=callbacks),
                datasets={"train": make_dataset()} if make_dataset is not None else None,
                # exact: every worker reads the same split (or stream) and takes its piece of each global batch
                # (see worker.py, shards.py); streaming: Ray Data's streaming split hands blocks to whichever
                # worker asks first, so batches depend on timing and on the number of workers
                dataset_config=(DataConfig(datasets_to_split=["train"]) if d.sharding == "streaming"
                                else DataConfig(datasets_to_split=[], execution_options=_ordered())),
            )
            try:
                with health_timeout(d.health_timeout_s):
                    result = trainer.fit()
            except TrainingFailedError as e:
                user = _user_error(e)
                if user is not None:
                    raise user from None
                raise TrainingError(f"The Ray Train run {str(run.path)!r} failed after {max(d.max_failures, 0)} "
                                    f"restart(s) (distributed.max_failures): {_failure_summary(e, run.path, d)}. "
                                    f"The workers' "
                                    f"logs are under Ray's session directory (/tmp/ray/session_latest/logs).") from None
            best = [{"path": c.path, d.checkpoint_metric: m.get(d.checkpoint_metric)}
                    for c, m in (result.best_checkpoints or [])]
            life.finished(ray_checkpoints=best)
        return run.path
    finally:
        if started:
            import ray
            ray.shutdown()


SHARDING_NOTE = {
    "exact": "every worker takes its slice of the same global batches: batches and gate decisions do not depend on "
             "the number of workers",
    "streaming": "Ray Data streaming_split: which images form a batch depends on the number of workers and on timing",
}


@contextmanager
def health_timeout(seconds: float):
    """RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S for the runs started inside (Ray Train reads it from the driver's
    environment when fit() creates its controller, and passes it on); the previous value is restored after."""
    key = "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"
    old = os.environ.get(key)
    os.environ[key] = f"{seconds:g}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _ordered():
    """Ray Data ingest options that keep the blocks in input order (row positions stay meaningful)."""
    from ray.train import DataConfig

    opts = DataConfig.default_ingest_options()
    opts.preserve_order = True
    return opts
