"""`gradprom federate`: federated GradProm across simulated hospitals (Flower's simulation runtime, Ray backend)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from gradprom.config_flags import FlagTable, add_config_options, merged_config, source_of

log = logging.getLogger(__name__)
# flag -> config field (type, choices, default and help from the field), or (field, a note)
FLAGS: FlagTable = {
    "hospitals": "federated.hospitals", "rounds": ("federated.rounds", "with --resume, the new total"),
    "aggregation": "federated.strategy", "strategy": "gradprom.strategy", "local_steps": "federated.local_steps",
    "gate_level": "federated.gate_level", "min_nodes": "federated.min_nodes",
    "round_timeout": "federated.round_timeout_s", "dirichlet_alpha": "federated.dirichlet_alpha",
    "size_skew": "federated.size_skew", "proximal_mu": "federated.proximal_mu", "num_cpus": "federated.num_cpus",
    "tau": ("gradprom.tau", "sites; the server gate with --gate-level server"), "task": "task",
    "data": ("data.source", "a store with --set federated.use_store_sites=true: one hospital per stored site"),
    "degradation": ("data.degradation", "every site's scanner/dose, unless --set federated.noise_min/noise_max "
                    "keep the ramp"),
    "dp": "federated.dp", "dp_clipping_norm": "federated.dp_clipping_norm",
    "dp_noise_multiplier": "federated.dp_noise_multiplier", "secure_aggregation": "federated.secure_aggregation",
    "seed": "seed", "out": "run.out", "name": ("run.name", "null: federated-<strategy>-<task>-<time>"),
}
METAVARS = {"data": "SOURCE", "out": "DIR", "name": "NAME", "strategy": "NAME"}


def register(sub) -> None:
    """Add the `federate` command to the main parser's sub-commands."""
    p = sub.add_parser(
        "federate", help="federated GradProm: hospitals train and gate locally, Flower aggregates",
        description="Split the data into hospitals that differ in scanner noise, case mix and size, then run a "
                    "Flower federation on this machine (simulation on a private Ray instance): each hospital runs "
                    "GradProm steps on its own images, only weights and metrics travel, and a Flower strategy "
                    "aggregates. Writes <out>/<name>/ with run.json, config.yaml, sites.parquet, rounds.parquet, "
                    "epochs.parquet and checkpoints/latest.pt. Values come from defaults, then --config, then "
                    "--set, then flags. Per-site settings: --set federated.sites.1.tau=1.0 (also .strategy, "
                    ".degradation, .data).")
    add_config_options(p, FLAGS, config_help="YAML: engine sections plus a `federated:` section (a federation's "
                       "config.yaml re-runs it)", set_help="set any config field, e.g. --set data.num_train=256 "
                       "--set federated.sites.0.tau=0.5", metavars=METAVARS)
    p.add_argument("--describe", action="store_true", help="print the table of sites (samples, class mix, "
                   "degradation) and exit without training")
    p.add_argument("--export-sites", metavar="DIR", help="write each site's images to DIR/hospital-<k>.npz (for a "
                   "real deployment: point each SuperNode's data-path at its file) and exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped federation from its last round "
                   "(--rounds to extend a finished one)")
    p.set_defaults(func=cmd_federate)


def resolve(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw federation config: base <- --config <- --set <- flags (validated by build_federation)."""
    from .config import FL_STRATEGIES

    if getattr(args, "strategy", None) and args.strategy.startswith("fed"):
        # --strategy once named the aggregation here; it now names the gate, as in `gradprom train`
        log.warning("`gradprom federate --strategy %s` is deprecated for the aggregation: use --aggregation %s "
                    "(--strategy now chooses the gate, as in `gradprom train`)", args.strategy, args.strategy)
        if args.strategy not in FL_STRATEGIES:
            from gradprom.platform.errors import ConfigError
            raise ConfigError(f"--aggregation (formerly --strategy; config field `federated.strategy`): got "
                              f"{args.strategy!r}; expected one of "
                              f"{', '.join(FL_STRATEGIES)}.")
        args.aggregation, args.strategy = args.aggregation or args.strategy, None
    return merged_config(args, FLAGS, base)


def cmd_federate(args: argparse.Namespace) -> int:
    from gradprom.platform.config import load_config_file
    from gradprom.platform.errors import DataError

    from .config import build_federation

    base = None
    if args.resume:
        if not (Path(args.resume) / "config.yaml").is_file():
            raise DataError(f"--resume {args.resume!r}: not a federation's run directory (no config.yaml); pass "
                            f"the directory `gradprom federate` wrote, e.g. runs/<name>.")
        base = load_config_file(Path(args.resume) / "config.yaml")
    raw = resolve(args, base)
    cfg, fed = build_federation(raw, source=source_of(args, FLAGS, f"{args.resume}/config.yaml" if args.resume
                                                      else "defaults"))
    if args.describe:
        _print_sites(cfg, fed)
        return 0
    if args.export_sites:
        from .export import export_sites

        for path in export_sites(cfg, fed, Path(args.export_sites)):
            print(path)
        return 0
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's database layer logs its plugins at INFO
    from .server_app import preflight, run_path_for
    from .simulation import simulate

    run_path = Path(args.resume) if args.resume else run_path_for(raw)
    preflight(raw, run_path, bool(args.resume))
    _print_sites(cfg, fed)
    path = simulate(raw, run_path=run_path, resume=bool(args.resume), verbose=bool(getattr(args, "verbose", False)))
    _print_summary(path)
    return 0


def _print_sites(cfg, fed) -> None:
    from rich.console import Console
    from rich.table import Table

    from .partition import describe_sites

    rows = describe_sites(cfg, fed)
    t = Table(title=f"{fed.hospitals} hospitals · {cfg.data.source} · {cfg.task}")
    for col in ("site", "train", "val", "class mix", "degradation", "τ / strategy", "note"):
        t.add_column(col, justify="right" if col in ("train", "val") else "left")
    for k, r in enumerate(rows):
        over = fed.sites.get(k)
        tau = over.tau if over and over.tau is not None else cfg.gradprom.tau
        strat = over.strategy if over and over.strategy else cfg.gradprom.strategy
        mix = " ".join(f"{x:.2f}" for x in r["class_mix"]) or "-"
        t.add_row(r["site"], str(r["num_train"]), str(r["num_val"]), mix, r["degradation"], f"{tau:g} / {strat}",
                  r["error"] or r["source"])
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(t)


def _print_summary(path: Path) -> None:
    from gradprom.platform.rundir import RunDir

    info = RunDir(path).read_run()
    test = info.get("test", {})
    shown = {k: v for k, v in test.items() if k in ("psnr", "psnr_input", "ssim", "accuracy", "auc", "dice")}
    print(f"federation finished: {path}")
    print("global model, test split: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print(f"rounds table: {path / 'rounds.parquet'}")
