"""Build, run and restore a tuning experiment: OptunaSearch (seeded, the paper's defaults first) + ASHA.

<runs>/<name>/
  run.json         kind "tune", objective, metrics, mode, num_trials, status, seed, best trial / Pareto trials
  config.yaml      the base config of every trial (a valid `gradprom train --config` file)
  tune.yaml        the `tune:` section (read back by --resume)
  optuna.db        the Optuna study (SQLite; name and URL in run.json): the searcher's state, read by --resume
  tune/            Ray Tune's folder: per-trial TensorBoard event files and Ray's own state, which holds pickles
                   and is never read back (--resume rebuilds the search from optuna.db, see resume.py)
  trials/<id>/     each trial's ordinary run directory
  trials.parquet   one row per trial x epoch; pareto.parquet; best/*.yaml (see results.py)
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gradprom.platform.config import Config, build_config, load_config_file, save_config
from gradprom.platform.errors import ConfigError, DataError
from gradprom.platform.rundir import RunDir, now_iso, versions

from .results import STATUSES, trial_rows, write_results, write_spec
from .space import TuneSpec, build_spec, default_point, fixed_values, param_space, param_space_names
from .study import make_optuna_search, open_storage, storage_url
from .trainable import TRIALS_DIR, run_trial

log = logging.getLogger(__name__)
TUNE_DIR = "tune"  # Ray Tune's experiment directory inside the experiment directory
SPEC_FILE = "tune.yaml"


# ---------------------------------------------------------------------------------------------------------
# the experiment directory
def default_name(cfg: Config, spec: TuneSpec) -> str:
    """tune-<task>-<objective>-<YYYYmmdd-HHMMSS>."""
    return f"tune-{cfg.task}-{spec.objective}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def trial_base(cfg: Config, spec: TuneSpec) -> Config:
    """The base config as trials use it: absolute data paths (trials run in other processes and directories),
    fixed dimensions applied, one torch thread per trial CPU, figures drawn once."""
    raw = cfg.to_dict()
    for section, field in (("data", "source"), ("gradprom", "recognizer_checkpoint")):
        v = raw[section][field]
        if v and v != "phantoms" and Path(v).exists():
            raw[section][field] = str(Path(v).resolve())
    from .space import apply_params

    raw = apply_params(raw, fixed_values(spec))
    raw["run"]["name"] = None
    if raw["run"]["num_threads"] is None:
        raw["run"]["num_threads"] = max(1, int(spec.cpus_per_trial))
    raw["run"]["figures_every_epoch"] = False
    return build_config(raw, source="tune base config")


def prepare(cfg: Config, spec: TuneSpec, out: str | Path, name: str | None = None) -> Path:
    """Validate everything, then create the experiment directory with run.json, config.yaml and tune.yaml."""
    metrics = spec.objective_metrics(cfg.task)  # ConfigError for an unknown metric
    spec.scheduler_metric(cfg.task)
    if spec.workers_per_trial and cfg.data.batch_size < spec.workers_per_trial:
        raise ConfigError(f"`tune.workers_per_trial`: {spec.workers_per_trial} workers need `data.batch_size` >= "
                          f"{spec.workers_per_trial}, got {cfg.data.batch_size}.")
    from gradprom.platform.data.sources import build_datasets

    build_datasets(cfg)  # every data error now, before Ray starts (DataError)
    base = trial_base(cfg, spec)
    exp = RunDir((Path(out) / (name or default_name(cfg, spec))).resolve())
    if exp.exists():
        raise ConfigError(f"Experiment directory {str(exp.path)!r} already holds a run; continue it with "
                          f"`gradprom tune --resume {exp.path}`, or choose another --name / --out.")
    exp.path.mkdir(parents=True, exist_ok=True)
    save_config(base, exp.config_yaml)
    write_spec(exp.path / SPEC_FILE, spec.model_dump(mode="json"))
    modes = spec.modes(cfg.task)
    exp.write_run(name=exp.path.name, kind="tune", status="created", start=None, end=None, task=cfg.task,
                  objective=spec.objective, metrics=metrics, mode=modes[0] if len(modes) == 1 else modes,
                  modes=modes, num_trials=spec.num_trials, max_epochs=spec.max_epochs, sampler=spec.sampler,
                  seed=spec.seed, search_space=param_space_names(spec), fixed=fixed_values(spec),
                  workers_per_trial=spec.workers_per_trial, versions=versions(), error=None,
                  optuna_study=exp.path.name, optuna_storage=storage_url(exp.path))
    return exp.path


def load(exp_dir: str | Path) -> tuple[RunDir, Config, TuneSpec]:
    """An existing experiment's directory, base config and tune spec; clear errors for anything else."""
    exp = RunDir(Path(exp_dir).resolve())
    if not exp.path.is_dir():
        raise DataError(f"--resume {str(exp_dir)!r}: no such directory; pass the experiment directory that "
                        f"`gradprom tune` printed (e.g. runs/tune-...).")
    info = exp.read_run() if exp.run_json.is_file() else {}
    if info.get("kind") != "tune" or not (exp.path / SPEC_FILE).is_file() or not exp.config_yaml.is_file():
        raise DataError(f"--resume {str(exp_dir)!r}: not a tuning experiment (needs run.json of kind 'tune', "
                        f"config.yaml and {SPEC_FILE}); pass the directory `gradprom tune` wrote.")
    cfg = build_config(load_config_file(exp.config_yaml), source=str(exp.config_yaml))
    spec = build_spec(yaml.safe_load((exp.path / SPEC_FILE).read_text()), source=str(exp.path / SPEC_FILE))
    return exp, cfg, spec


# ---------------------------------------------------------------------------------------------------------
# Ray Tune
def make_trainable(exp: Path, cfg: Config, spec: TuneSpec):
    """The trial function with its constant arguments and resources (the same for a new run and a restore)."""
    from ray import tune

    fn = tune.with_parameters(run_trial, base=cfg.to_dict(), exp_dir=str(exp), max_epochs=spec.max_epochs,
                              workers=spec.workers_per_trial)
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    return tune.with_resources(fn, resources)


def make_searcher(cfg: Config, spec: TuneSpec, storage, study_name: str, trials_before: int | None = None):
    """OptunaSearch over the space, seeded, its study in `storage`; a new search evaluates the paper's defaults
    first. A resumed one (`trials_before` trials already in the study) seeds its sampler with seed +
    trials_before, so it does not draw the first run's random points again."""
    import optuna

    metrics, modes = spec.objective_metrics(cfg.task), spec.modes(cfg.task)
    seed = spec.seed + (trials_before or 0)
    sampler = {"tpe": optuna.samplers.TPESampler(seed=seed), "random": optuna.samplers.RandomSampler(seed=seed),
               "nsga2": optuna.samplers.NSGAIISampler(seed=seed)}[spec.sampler]
    fresh = trials_before is None  # a resumed study still holds the defaults (done, or enqueued and waiting)
    points = [default_point(spec, cfg)] if fresh and spec.evaluate_defaults and param_space_names(spec) else None
    one = len(metrics) == 1
    return make_optuna_search(storage=storage, study_name=study_name, max_epochs=spec.max_epochs,
                              metric=metrics[0] if one else metrics, mode=modes[0] if one else modes,
                              points_to_evaluate=points, sampler=sampler)


def make_scheduler(cfg: Config, spec: TuneSpec):
    """ASHA on one metric, per epoch (training_iteration), up to max_epochs. It does not stop a trial for
    reaching max_epochs (`stop_last_trials=False`): the trial ends by itself after its final test, so its
    process stays clean for the next trial (`reuse_actors`)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not spec.asha:
        return FIFOScheduler()
    from .space import METRIC_MODES

    metric = spec.scheduler_metric(cfg.task)
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=METRIC_MODES[metric],
                         max_t=spec.max_epochs, grace_period=min(spec.grace_period, spec.max_epochs),
                         reduction_factor=spec.reduction_factor, stop_last_trials=False)


def connect(address: str | None, num_cpus: int | None, timeout_s: float = 60.0) -> bool:
    """A private local Ray instance (default) or the cluster at `address`; True when this call started Ray."""
    import os

    from gradprom.platform.distributed.cluster import connect as connect_ray

    return connect_ray(address, num_cpus or os.cpu_count() or 1, timeout_s)


def study_name_of(exp: RunDir) -> str:
    """The study's name recorded in run.json; a clear error for an experiment without one."""
    name = exp.read_run().get("optuna_study")
    if not isinstance(name, str) or not name:
        raise DataError(f"--resume {str(exp.path)!r}: run.json names no Optuna study (field `optuna_study`). The "
                        f"experiment was written by a GradProm that kept the search only in Ray's pickle files, "
                        f"which --resume does not load (a pickle can run code); start a new search with "
                        f"`gradprom tune`.")
    return name


def run(exp_dir: str | Path, *, resume: bool = False, address: str | None = None,
        num_cpus: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run (or continue) the experiment in `exp_dir`; returns run.json. Ctrl-C leaves it resumable."""
    from . import quiet
    from .resume import ResumePlan, plan_resume, prime_asha

    exp, cfg, spec = load(exp_dir)
    study_name = study_name_of(exp)
    tune_verbose = quiet.configure(verbose)  # before Ray starts: its start-up warning
    storage = open_storage(exp.path)
    plan = ResumePlan(remaining=spec.num_trials)
    if resume:  # nothing Ray pickled is read: the search is rebuilt from optuna.db and the project's records
        plan = plan_resume(exp.path, spec.num_trials, study_name, storage, TUNE_DIR)
        log.info("resuming %s: %d trial(s) kept, %d to run (%d interrupted point(s) evaluated again)",
                 exp.path, len(plan.kept), plan.remaining, plan.requeued)
    exp.write_run(optuna_study=study_name, optuna_storage=storage_url(exp.path))  # the path may have moved
    if plan.remaining == 0:
        return finish(exp, cfg, spec, None, plan.rows)
    started = connect(address, num_cpus)
    try:
        from ray import tune

        trainable = make_trainable(exp.path, cfg, spec)
        from .callback import TrialsTable

        callback = TrialsTable(str(exp.path), spec.max_epochs, spec.num_trials)
        scheduler = make_scheduler(cfg, spec)
        prime_asha(scheduler, plan.rows, spec.scheduler_metric(cfg.task))
        searcher = make_searcher(cfg, spec, storage, study_name, plan.trials_in_study if resume else None)
        tuner = tune.Tuner(
            trainable, param_space=param_space(spec),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=plan.remaining, max_concurrent_trials=spec.max_concurrent,
                                        # a finished trial's process runs the next one: no second start-up
                                        # (importing torch and MONAI) per trial
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(exp.path), callbacks=[callback],
                                      verbose=tune_verbose,
                                      failure_config=tune.FailureConfig(max_failures=spec.max_failures)))
        import ray

        info = exp.read_run()
        exp.write_run(status="running", start=info.get("start") or now_iso(), end=None, error=None,
                      address=address or "local", versions={**versions(), "ray": ray.__version__})
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            exp.write_run(status="stopped", end=now_iso(), error="interrupted by the user; continue with --resume")
            raise
        return finish(exp, cfg, spec, grid, plan.rows)
    except BaseException as e:
        if exp.read_run().get("status") == "running":
            exp.write_run(status="failed", end=now_iso(), error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if started:
            import ray

            ray.shutdown()


def collect_rows(grid, status: dict[str, str], spec: TuneSpec, kept: set[str]) -> list[dict[str, Any]]:
    """trials.parquet rows of this Tuner's trials from Tune's results (authoritative); `kept` trials of an
    earlier, resumed run have their rows already."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set(kept)
    for result in grid or []:
        df = result.metrics_dataframe
        records = [] if df is None else df.to_dict("records")
        tid = (result.metrics or {}).get("trial_id") or (records[-1].get("trial_id") if records else None)
        if tid is None:
            continue
        seen.add(tid)
        st = status.get(tid, "ERROR" if result.error else "TERMINATED")
        for rec in records:
            rec.setdefault("config", result.config)
        rows += trial_rows(tid, st if st in STATUSES else "RUNNING", records, spec.max_epochs)
    for tid, st in status.items():  # trials that failed before their first epoch
        if tid not in seen and st == "ERROR":
            rows += trial_rows(tid, st, [{}], spec.max_epochs)
    return rows


def finish(exp: RunDir, cfg: Config, spec: TuneSpec, grid, kept_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the tables and the best configs, mark ASHA-stopped trial runs, and close run.json."""
    from .callback import read_statuses

    statuses = read_statuses(exp.path)
    rows = kept_rows + collect_rows(grid, statuses, spec, {r["trial_id"] for r in kept_rows})
    metrics, modes = spec.objective_metrics(cfg.task), spec.modes(cfg.task)
    summary = write_results(exp.path, rows, cfg.to_dict(), metrics, modes, spec.max_epochs)
    for r in rows:  # a trial ASHA stopped ended between epochs: its run directory says so
        trial_run = RunDir(exp.path / TRIALS_DIR / r["trial_id"])
        info = trial_run.read_run()
        if r["stopped_early"] and info.get("status") in ("running", "failed"):
            # a Ray Train trial's run sees its controller go away when Tune ends the trial, and says "failed"
            ended = f" (the run ended with: {info['error']})" if info.get("error") else ""
            trial_run.write_run(status="stopped", end=now_iso(),
                                error=f"stopped early by ASHA after epoch {r['training_iteration']}{ended}")
    complete = len(statuses) >= spec.num_trials and all(s in ("TERMINATED", "ERROR") for s in statuses.values())
    if complete:
        return exp.write_run(status="finished", end=now_iso(), **summary)
    return exp.write_run(status="stopped", end=now_iso(), **summary,
                         error=f"interrupted with {sum(s in ('TERMINATED', 'ERROR') for s in statuses.values())} of "
                               f"{spec.num_trials} trials done; continue with `gradprom tune --resume {exp.path}`")
