"""The `gradprom` command: thin argument handling over the platform (and later tuning, federated, ...).

User mistakes (bad config values, missing or damaged files, wrong data) print one paragraph and exit 2;
an interrupted run exits 130 after marking itself "stopped".
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradprom.config_flags import FlagTable, add_config_options, merged_config, source_of
from gradprom.help_format import DefaultsHelpFormatter
from gradprom.platform.strategies import REGISTRY, strategy_help

# flag -> config field (type, choices, default and help come from the field; flags not given are not applied,
# so a config file's values stand)
TRAIN_FLAGS: FlagTable = {
    "task": "task", "seed": "seed", "data": "data.source", "degradation": "data.degradation",
    "batch_size": "data.batch_size", "strategy": ("gradprom.strategy", strategy_help()), "tau": "gradprom.tau",
    "granularity": "gradprom.granularity", "gate_space": "gradprom.gate_space", "scale": "gradprom.scale",
    "moments": "gradprom.moments", "gate_metric": "gradprom.gate_metric", "lambda_e": "gradprom.lambda_e",
    "lambda_r": "gradprom.lambda_r", "recognizer_mode": "gradprom.recognizer_mode",
    "recognizer_checkpoint": "gradprom.recognizer_checkpoint", "epochs": "optim.epochs",
    "optimizer": "optim.optimizer", "lr": "optim.lr", "max_steps_per_epoch": "optim.max_steps_per_epoch",
    "out": "run.out", "name": "run.name", "device": "run.device", "workers": "distributed.workers",
    "gpus_per_worker": "distributed.gpus_per_worker", "address": "distributed.address",
}
TRAIN_METAVARS = {"data": "SOURCE", "degradation": "SPEC", "strategy": "NAME", "recognizer_checkpoint": "PATH",
                  "out": "DIR", "name": "NAME", "address": "HOST:PORT"}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    add_config_options(p, TRAIN_FLAGS, config_help="YAML config (e.g. a run's config.yaml); flags override it",
                       set_help="set any config field, e.g. --set model.enhancer=basicunet (repeatable)",
                       metavars=TRAIN_METAVARS)


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None):
    """Config from defaults <- --config file <- --set options <- explicit flags."""
    from gradprom.platform.config import build_config

    raw = merged_config(args, TRAIN_FLAGS, base)
    first = f"{args.resume}/config.yaml" if getattr(args, "resume", None) else "defaults"
    return build_config(raw, source=source_of(args, TRAIN_FLAGS, first))


# -----------------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from gradprom.platform.config import load_config_file
    from gradprom.platform.loop import train

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            from gradprom.platform.errors import DataError
            raise DataError(f"--resume {str(run_dir)!r}: not a run directory (no config.yaml); pass the "
                            f"directory `gradprom train` wrote, e.g. runs/<name>.")
        cfg = resolve_config(args, base=load_config_file(run_dir / "config.yaml"))
    else:
        cfg = resolve_config(args)
    if cfg.distributed.workers > 0:  # Ray Train; imported here so the local path never loads Ray
        from gradprom.platform.distributed.runner import train_on_ray
        path = train_on_ray(cfg, resume=bool(args.resume), run_path=args.resume)
    else:
        path = train(cfg, resume=bool(args.resume), run_path=args.resume)
    _print_run_summary(path)
    return 0


def _print_run_summary(path: Path) -> None:
    from gradprom.platform.rundir import RunDir

    info = RunDir(path).read_run()
    test = info.get("test", {})
    shown = {k: v for k, v in test.items() if k in ("psnr", "psnr_input", "ssim", "accuracy", "auc", "dice")}
    print(f"run finished: {path}")
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print(next_steps(path))


def next_steps(path: Path) -> str:
    """What to run after `train`: evaluate the run, open the dashboard on its parent, where the figures are."""
    import shlex

    run, runs = shlex.quote(str(path)), shlex.quote(str(Path(path).parent))
    return (f"next:\n  gradprom evaluate {run}\n  gradprom dashboard --runs {runs}\n"
            f"  figures: {Path(path) / 'figures'}")


def cmd_config(args: argparse.Namespace) -> int:
    from gradprom.platform.config import annotated_defaults

    print(annotated_defaults().strip())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gradprom.platform.evaluate import evaluate_run

    metrics = evaluate_run(args.run, checkpoint=args.checkpoint, split=args.split, data=args.data,
                           device=args.device)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.run} · {args.checkpoint} checkpoint · {args.split} split")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.4f}")
    Console().print(t)
    return 0


DEMO_STRATEGIES = list(REGISTRY)  # every registered strategy, baselines first


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gradprom.platform.config import build_config
    from gradprom.platform.loop import train
    from gradprom.platform.rundir import RunDir

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    root = Path(args.out) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(stderr=True)
    console.print(f"GradProm demo: {len(strategies)} strategies on the embedded phantoms ({args.task}, "
                  f"{args.degradation}), {args.epochs} epochs each; runs in {root}")
    rows = []
    for s in strategies:
        t0 = time.monotonic()
        cfg = build_config({"task": args.task, "seed": args.seed,
                            "data": {"num_train": args.train_images, "num_val": 128, "num_test": 256,
                                     "degradation": args.degradation},
                            "gradprom": {"strategy": s},
                            "optim": {"epochs": args.epochs},
                            "run": {"out": str(root), "name": s.replace(":", "-"), "device": args.device}},
                           source="demo")
        console.print(f"[bold]{s}[/bold] ...")
        path = train(cfg)
        info = RunDir(path).read_run()
        train_rows = [r for r in RunDir(path).read_epochs() if r["split"] == "train"]
        rows.append((s, info["test"], train_rows, time.monotonic() - t0))
    metric = "accuracy" if args.task == "classification" else "dice"
    table = Table(title=f"GradProm demo · test split · {args.task} · {args.degradation}")
    for col in ("strategy", "PSNR (dB)", "SSIM", metric, "gate-open rate", "mean cos", "time (s)"):
        # never ellipsize the strategy names (rich shrinks columns to fit an 80-column or piped console)
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=col == "strategy")
    psnr_in = rows[0][1]["psnr_input"] if rows else math.nan
    for s, test, train_rows, secs in rows:
        gate = [r["gate_open_rate"] for r in train_rows if r.get("gate_open_rate") is not None]
        cos = [r["mean_cos"] for r in train_rows if r.get("mean_cos") is not None]
        g = sum(gate) / len(gate) if gate and not any(math.isnan(x) for x in gate) else math.nan
        table.add_row(s, f"{test['psnr']:.2f}", f"{test['ssim']:.4f}", f"{test[metric]:.4f}",
                      "n/a" if math.isnan(g) else f"{g:.2f}", f"{sum(cos) / max(len(cos), 1):+.3f}", f"{secs:.0f}")
    out = Console()
    if not out.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        out = Console(width=120)
    out.print(table)
    print(f"degraded input: PSNR {psnr_in:.2f} dB. Runs, tables and figures: {root}")
    return 0


# -----------------------------------------------------------------------------------------------------------
VERSIONED = ("gradprom", "torch", "monai", "ray", "flwr", "optuna", "torchjd")


def version_text() -> str:
    """gradprom's and its main libraries' versions, read from the installed metadata (nothing heavy imported)."""
    import platform
    from importlib import metadata

    lines = []
    for name in VERSIONED:
        try:
            v = metadata.version(name)
        except metadata.PackageNotFoundError:
            v = __import__("gradprom").__version__ if name == "gradprom" else "not installed"
        lines.append(f"{name} {v}")
    return "\n".join(lines + [f"python {platform.python_version()}"])


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradprom", description="Task-driven medical image enhancement with "
                                     "Gradient Promotion (GradProm).")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, library logs (Ray, Flower, torch, MONAI...) included")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--version", action=_VersionAction, help="print the versions of gradprom and the "
                        "libraries that decide a run's numbers, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train locally or on Ray Train workers (--workers)",
                       description="Train the enhancer E and the recognizer R with GradProm (or a baseline), on this "
                                   "machine or on Ray Train workers (--workers N). Values come from defaults, then "
                                   "--config, then --set, then flags.")
    _add_train_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or finished run from its latest "
                   "checkpoint (flags override its config, e.g. --epochs to train longer)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint on a split",
                       description="Load a run's checkpoint and print PSNR, SSIM and the task metric on one split.",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR", help="a run directory written by `gradprom train` (e.g. runs/<name>)")
    p.add_argument("--checkpoint", default="best", help="best | latest | a checkpoint path")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split to evaluate on")
    p.add_argument("--data", metavar="SOURCE",
                   help="evaluate on other data (same channels and classes); default: the run's own")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the models")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("config", help="print every config field with its default and what it means",
                       description="Print the default configuration as YAML, each field under a comment that says "
                                   "what it does. Save it, edit what you need and pass it with --config.")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="train each strategy briefly on the phantoms and compare them in one table",
                       description="Train each strategy briefly on the embedded phantoms and print one comparison "
                                   "table (PSNR, SSIM, task metric, gate-open rate, time).",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--task", default="classification", choices=["classification", "segmentation"],
                   help="what the recognizer does")
    p.add_argument("--degradation", default="gaussian:sigma=0.1", metavar="SPEC",
                   help="how the input is degraded, e.g. lowdose, sr2, 'blur:sigma=1+gaussian:sigma=0.05'")
    p.add_argument("--strategies", default=",".join(DEMO_STRATEGIES), metavar="LIST", help="comma-separated strategies")
    p.add_argument("--epochs", type=int, default=4, metavar="N", help="epochs per strategy")
    p.add_argument("--train-images", type=int, default=512, metavar="N", help="phantom training images")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of data and models")
    p.add_argument("--out", default="runs", metavar="DIR", help="parent directory of the demo's run directories")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.set_defaults(func=cmd_demo)

    for module in ("gradprom.data_cli", "gradprom.experiments.cli", "gradprom.federated.cli", "gradprom.tuning.cli",
                   "gradprom.dashboard.cli", "gradprom.inference.cli"):  # each adds its own sub-commands
        try:
            register = __import__(module, fromlist=["register"]).register
        except ImportError as e:
            if not e.name or not module.startswith(e.name):  # it exists but something it needs is missing
                raise
            continue
        register(sub)
    return parser


def _sigterm_as_interrupt() -> list[bool]:
    """SIGTERM (what `timeout`, Slurm, `docker stop` and Kubernetes send) takes Ctrl-C's path: the run is marked
    "stopped" with its resume hint and the command exits 143. Returns a flag list that becomes [True] once it
    arrives. Only the main thread can install handlers; elsewhere (a test runner's thread) nothing changes."""
    got: list[bool] = []

    def stop(signum, frame) -> None:
        if not got:  # a second SIGTERM while unwinding does not interrupt the cleanup
            got.append(True)
            raise KeyboardInterrupt("terminated by SIGTERM")

    if threading.current_thread() is threading.main_thread():
        _PREVIOUS_SIGTERM.append(signal.signal(signal.SIGTERM, stop))
    return got


_PREVIOUS_SIGTERM: list = []  # handlers to put back when main() returns (it is also called in-process by tests)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from gradprom.platform.logs import setup_logging

    setup_logging("verbose" if args.verbose else "quiet" if args.quiet else "normal")
    from gradprom.platform.errors import GradPromError

    terminated = _sigterm_as_interrupt()
    try:
        return args.func(args)
    except GradPromError as e:
        print(f"gradprom: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradprom: terminated (SIGTERM)" if terminated else "gradprom: interrupted", file=sys.stderr)
        return 143 if terminated else 130
    except OSError as e:  # e.g. an unwritable --out: a user problem, not a bug
        print(f"gradprom: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    finally:
        if _PREVIOUS_SIGTERM:
            signal.signal(signal.SIGTERM, _PREVIOUS_SIGTERM.pop())


if __name__ == "__main__":
    sys.exit(main())
