"""`gradprom tune` and `gradprom tune report`: hyperparameter search with Ray Tune + Optuna (ASHA stopping).

Ray is imported inside the command functions only, so `gradprom --help` stays fast and light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gradprom.config_flags import FlagTable, add_config_options, merged_config, source_of

# flag -> config field (type, choices, default and help come from the field: TuneSpec for `tune.*`, the run
# config for the rest), as for `gradprom train` and `gradprom federate`
TUNE_FLAGS: FlagTable = {
    "trials": "tune.num_trials", "max_epochs": "tune.max_epochs", "objective": "tune.objective",
    "tau": "tune.tau", "lambda_e": "tune.lambda_e", "lambda_r": "tune.lambda_r", "lr": "tune.lr",
    "strategies": "tune.strategy", "granularities": "tune.granularity", "scales": "tune.scale",
    "moments": "tune.moments", "gate_metrics": "tune.gate_metric", "sampler": "tune.sampler",
    "search_seed": "tune.seed", "concurrency": "tune.max_concurrent", "cpus_per_trial": "tune.cpus_per_trial",
    "gpus_per_trial": "tune.gpus_per_trial", "workers_per_trial": "tune.workers_per_trial",
    "task": "task", "data": "data.source", "degradation": "data.degradation", "seed": "seed",
    "device": "run.device",
}
METAVARS = {"objective": "METRIC", "data": "SOURCE", "degradation": "SPEC"}


def register(sub) -> None:
    """Add `tune` (with its `report` sub-command) to the main parser's sub-commands."""
    p = sub.add_parser("tune", help="search the gate threshold, loss weights and learning rate (Ray Tune + Optuna)",
                       description="Hyperparameter search over GradProm runs: Optuna's TPE (seeded; the paper's "
                                   "defaults first), ASHA early stopping on per-epoch reports. Writes "
                                   "<out>/<name>/ with trials.parquet, pareto.parquet (several objectives) and "
                                   "ready-to-use configs in best/. Values come from the defaults, then --config "
                                   "(its `tune:` section configures the search), then --set, then flags. Ctrl-C "
                                   "stops it resumably: continue with --resume DIR.")
    add_config_options(p, TUNE_FLAGS, config_help="YAML run config (the base of every trial), with an optional "
                       "`tune:` section", set_help="set any field, e.g. --set model.enhancer=basicunet or --set "
                       "tune.grace_period=2", metavars=METAVARS, extra={"tune": _spec_model()}, typed=False)
    p.add_argument("--out", default=None, help="runs directory (default: the config's run.out, runs)")
    p.add_argument("--name", default=None, help="experiment name (default: tune-<task>-<objective>-<time>)")
    p.add_argument("--address", default=None, help="join this Ray cluster ('auto' on a cluster node, or "
                   "HOST:PORT); default: start a private local Ray instance")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted experiment from its Optuna study "
                   "(optuna.db) and trial tables, never from Ray's pickled state; finished trials are kept, "
                   "unfinished ones start again with the same values")
    p.set_defaults(func=cmd_tune)

    rsub = p.add_subparsers(dest="tune_command", metavar="report")
    r = rsub.add_parser("report", help="print the top trials and write PNG plots",
                        description="Print the top trials of an experiment and write plots to <DIR>/report/: "
                                    "the objective over trials, tau against the objectives, the Pareto front.")
    r.add_argument("dir", metavar="DIR", help="the experiment directory")
    r.add_argument("--top", type=int, default=5, help="trials to list (default 5)")
    r.set_defaults(func=cmd_report)


def _spec_model():
    from .space import TuneSpec

    return TuneSpec


def resolve(args: argparse.Namespace):
    """(base Config, TuneSpec) from defaults <- --config <- --set <- flags (one mechanism: config_flags)."""
    from gradprom.platform.config import build_config
    from gradprom.platform.errors import ConfigError

    from .space import build_spec

    raw = merged_config(args, TUNE_FLAGS)
    tune_raw = raw.pop("tune", None) or {}
    if not isinstance(tune_raw, dict):
        raise ConfigError(f"Config file {args.config!r}: the `tune:` section must be a mapping of fields.")
    source = source_of(args, TUNE_FLAGS)
    return build_config(raw, source=source), build_spec(tune_raw, source=source)


def cmd_tune(args: argparse.Namespace) -> int:
    from . import job

    if args.resume:
        given = [f for f in (*TUNE_FLAGS, "config", "name", "out") if getattr(args, f) is not None]
        if given or args.sets:
            from gradprom.platform.errors import ConfigError
            raise ConfigError(f"--resume continues the experiment exactly as it was started; drop "
                              f"{', '.join('--' + g.replace('_', '-') for g in given) or '--set'}.")
        exp = Path(args.resume)
        job.load(exp)  # a clear error for a wrong directory before Ray starts
    else:
        cfg, spec = resolve(args)
        exp = job.prepare(cfg, spec, args.out or cfg.run.out, args.name)
        print(f"tuning experiment: {exp}")
    print_hints(Path(exp).resolve())
    info = job.run(exp, resume=bool(args.resume), address=args.address, num_cpus=args.num_cpus,
                   verbose=bool(getattr(args, "verbose", False)))
    return print_summary(Path(exp).resolve(), info)


def print_hints(exp: Path) -> None:
    """Where the durable per-trial TensorBoard files and the Optuna study are (not Ray's temporary folder)."""
    from .study import storage_url

    print(f"TensorBoard: tensorboard --logdir {exp / 'tune'}    Optuna: optuna-dashboard {storage_url(exp)}")


def print_summary(exp: Path, info: dict[str, Any]) -> int:
    """The outcome in a few lines; 130 when the search was interrupted (resumable)."""
    print(f"experiment {exp}: {info.get('trials_finished', 0)} trials finished "
          f"({info.get('trials_stopped_early', 0)} stopped early by ASHA, {info.get('trials_errored', 0)} failed) "
          f"of {info['num_trials']}")
    if info.get("best_trial"):
        vals = "  ".join(f"{k} {v:.4f}" for k, v in info["best"].items())
        params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in info["best_config"].items())
        print(f"best trial {info['best_trial']}: {vals}  ({params})")
        print(f"train it: gradprom train --config {exp / 'best' / 'best.yaml'}")
    if info.get("pareto_trials"):
        print(f"Pareto front: {len(info['pareto_trials'])} trials in {exp / 'pareto.parquet'}; configs in "
              f"{exp / 'best'}/pareto-<trial>.yaml")
    if info.get("status") != "finished":
        print(f"interrupted: continue with `gradprom tune --resume {exp}`")
        return 130
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    print(report(Path(args.dir), top=args.top))
    return 0
