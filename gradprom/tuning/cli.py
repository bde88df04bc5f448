"""`gradprom tune` and `gradprom tune report`: hyperparameter search with Ray Tune + Optuna (ASHA stopping).

Ray is imported inside the command functions only, so `gradprom --help` stays fast and light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# flag -> field of the `tune:` section
TUNE_FLAGS: dict[str, tuple[str, type, str]] = {
    "trials": ("num_trials", int, "number of trials (default 8)"),
    "max_epochs": ("max_epochs", int, "epochs of a trial that ASHA does not stop (default 4)"),
    "objective": ("objective", str, "psnr | ssim | task | pareto (psnr and the task metric) | a metric name "
                  "(accuracy, auc, dice, loss_e, ...); default psnr"),
    "tau": ("tau", str, "gate threshold range LO,HI within [-1, 1] (default 0,0.5)"),
    "lambda_e": ("lambda_e", str, "log-uniform range LO,HI of the enhancement weight (default 0.5,2)"),
    "lambda_r": ("lambda_r", str, "log-uniform range LO,HI of the recognition weight (default 0.01,1)"),
    "lr": ("lr", str, "log-uniform range LO,HI of the enhancer's learning rate (default 1e-4,1e-2)"),
    "strategies": ("strategy", str, "comma-separated strategies to search too (default: the base config's)"),
    "granularities": ("granularity", str, "comma-separated: global,layer (default: the base config's)"),
    "scales": ("scale", str, "comma-separated: none,match,clip (gate variants; default: the base config's)"),
    "moments": ("moments", str, "comma-separated: shared,separate (default: the base config's)"),
    "gate_metrics": ("gate_metric", str, "comma-separated: euclidean,preconditioned (default: the base config's)"),
    "sampler": ("sampler", str, "Optuna sampler: tpe (default) | nsga2 | random"),
    "search_seed": ("seed", int, "the sampler's seed (default 0)"),
    "concurrency": ("max_concurrent", int, "trials at a time (default: as many as the CPUs allow)"),
    "cpus_per_trial": ("cpus_per_trial", float, "CPUs per trial (default 1)"),
    "gpus_per_trial": ("gpus_per_trial", float, "GPUs per trial (default 0)"),
    "workers_per_trial": ("workers_per_trial", int, "0: a trial runs the local loop (default); N: each trial "
                          "trains on N Ray Train workers"),
}
# flag -> field of the base run config
BASE_FLAGS: dict[str, tuple[str, type, str]] = {
    "task": ("task", str, "classification | segmentation"),
    "data": ("data.source", str, "'phantoms' (default), an .npz, a store or an image folder"),
    "degradation": ("data.degradation", str, "e.g. gaussian:sigma=0.1, lowdose, sr2"),
    "seed": ("seed", int, "seed of data, degradations and model init of every trial"),
    "device": ("run.device", str, "auto | cpu | cuda"),
}
LIST_FIELDS = ("strategy", "granularity", "scale", "moments", "gate_metric")


def register(sub) -> None:
    """Add `tune` (with its `report` sub-command) to the main parser's sub-commands."""
    p = sub.add_parser("tune", help="search the gate threshold, loss weights and learning rate (Ray Tune + Optuna)",
                       description="Hyperparameter search over GradProm runs: Optuna's TPE (seeded; the paper's "
                                   "defaults first), ASHA early stopping on per-epoch reports. Writes "
                                   "<out>/<name>/ with trials.parquet, pareto.parquet (several objectives) and "
                                   "ready-to-use configs in best/. Values come from the defaults, then --config "
                                   "(its `tune:` section configures the search), then --set, then flags. Ctrl-C "
                                   "stops it resumably: continue with --resume DIR.")
    p.add_argument("--config", metavar="FILE", help="YAML run config (the base of every trial), with an "
                   "optional `tune:` section")
    for flag, (field, _, help_) in {**TUNE_FLAGS, **BASE_FLAGS}.items():
        where = f"tune.{field}" if flag in TUNE_FLAGS else field
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, metavar=_metavar(flag),
                       help=f"{help_} [{where}]")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any field, e.g. --set model.enhancer=basicunet or --set tune.grace_period=2")
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


def _metavar(flag: str) -> str:
    field, typ, _ = {**TUNE_FLAGS, **BASE_FLAGS}[flag]
    if field in ("tau", "lambda_e", "lambda_r", "lr"):
        return "LO,HI"
    if field in LIST_FIELDS:
        return "A,B,..."
    return "N" if typ in (int, float) else "NAME"


def _typed(flag: str, table: dict[str, tuple[str, type, str]], value: str) -> Any:
    from gradprom.platform.errors import ConfigError

    field, typ, _ = table[flag]
    if field in LIST_FIELDS:
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        return typ(value)
    except ValueError:
        raise ConfigError(f"--{flag.replace('_', '-')}: expected a {typ.__name__}, got {value!r}.") from None


def resolve(args: argparse.Namespace):
    """(base Config, TuneSpec) from defaults <- --config <- --set <- flags."""
    from gradprom.platform.config import build_config, dotted_override, load_config_file, merge, parse_set_option

    from .space import build_spec

    raw: dict[str, Any] = load_config_file(args.config) if args.config else {}
    tune_raw = raw.pop("tune", None) or {}
    if not isinstance(tune_raw, dict):
        from gradprom.platform.errors import ConfigError
        raise ConfigError(f"Config file {args.config!r}: the `tune:` section must be a mapping of fields.")
    for s in args.sets:
        override = parse_set_option(s)
        if "tune" in override:
            tune_raw = merge(tune_raw, override.pop("tune"))
        raw = merge(raw, override)
    for flag in BASE_FLAGS:
        if getattr(args, flag) is not None:
            raw = merge(raw, dotted_override(BASE_FLAGS[flag][0], _typed(flag, BASE_FLAGS, getattr(args, flag))))
    for flag in TUNE_FLAGS:
        if getattr(args, flag) is not None:
            tune_raw[TUNE_FLAGS[flag][0]] = _typed(flag, TUNE_FLAGS, getattr(args, flag))
    source = " + ".join(["defaults"] + ([args.config] if args.config else []) + ["command line"])
    return build_config(raw, source=source), build_spec(tune_raw, source=source)


def cmd_tune(args: argparse.Namespace) -> int:
    from . import job

    if args.resume:
        given = [f for f in (*TUNE_FLAGS, *BASE_FLAGS, "config", "name", "out") if getattr(args, f) is not None]
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
        params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info["best_config"].items())
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
