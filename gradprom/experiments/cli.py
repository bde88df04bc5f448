"""`gradprom experiment`: run the evidence grid and write its report."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gradprom.help_format import DefaultsHelpFormatter

from .grid import DEFAULT_STRATEGIES, DEGRADATIONS, PRESET_AXES, PRESETS, STRATEGIES, TASKS


def register(sub) -> None:
    """Add the `experiment` command to the main parser's sub-commands."""
    p = sub.add_parser("experiment", help="run the strategy × task × degradation × seed grid and write a report",
                       formatter_class=DefaultsHelpFormatter,
                       description="Does GradProm keep image quality while helping the task? Trains every cell "
                                   "(reusing finished ones, so an interrupted grid continues), judges each with "
                                   "its own recognizer and with one frozen clean recognizer, and writes "
                                   "results.parquet and report/report.md.")
    p.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="micro: a smoke test of the whole grid; quick: <= 30 min on 2 CPU cores; medium: "
                        "the testbed with a task signal (phantoms v2, warm-started R, 6 seeds, about 1 h on 2 idle "
                        "cores); paper: full size, for a GPU")
    p.add_argument("--data", default="phantoms", metavar="SOURCE",
                   help="phantoms or a dataset the engine reads (.npz)")
    p.add_argument("--out", default="experiments/grid", metavar="DIR", help="output directory")
    p.add_argument("--strategies", default=None, metavar="LIST", help=f"comma-separated, from {', '.join(STRATEGIES)} "
                   f"(default: the preset's; quick: {','.join(DEFAULT_STRATEGIES)})")
    p.add_argument("--tasks", default=None, metavar="LIST", help="comma-separated: classification,segmentation "
                   "(default: the preset's; medium: classification)")
    p.add_argument("--degradations", default=None, metavar="LIST",
                   help=f"comma-separated, from {', '.join(f'{k} ({v})' for k, v in DEGRADATIONS.items())}")
    p.add_argument("--lambda-sweep", default=None, metavar="K1,K2,...",
                   help="also run every task-driven strategy at these multiples of λ_r (e.g. 0.3,1,3); the report "
                        "draws PSNR-vs-task Pareto fronts")
    p.add_argument("--seeds", type=parse_seeds, default=None, metavar="LIST|N",
                   help="the seeds, e.g. 0,1,2 (a single seed: 5,), or a count N meaning 0..N-1; default: the "
                        "preset's count")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from finished cells")
    p.set_defaults(func=cmd_experiment)


def parse_seeds(text: str) -> int | list[int]:
    """`--seeds`: "0,1,2" (or "5,") -> those seeds; "3" -> a count (seeds 0, 1, 2)."""
    try:
        if "," in text:
            return [int(t) for t in _split(text)]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0,1,2 or a count such as 3, got {text!r}") from None


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_experiment(args: argparse.Namespace) -> int:
    from gradprom.platform.errors import DataError

    from .grid import GridSpec
    from .report import write_report
    from .runner import run_grid

    axes = PRESET_AXES.get(args.preset, {})
    given = (("strategies", args.strategies, DEFAULT_STRATEGIES), ("tasks", args.tasks, TASKS),
             ("degradations", args.degradations, DEGRADATIONS))
    pick = {name: _split(v) if v is not None else list(axes.get(name, default)) for name, v, default in given}
    if args.lambda_sweep:
        from gradprom.platform.errors import ConfigError

        from .grid import sweep_arms

        try:
            factors = [float(k) for k in _split(args.lambda_sweep)]
        except ValueError:
            raise ConfigError(f"--lambda-sweep: got {args.lambda_sweep!r}; expected positive numbers, e.g. "
                              f"0.3,1,3.") from None
        if not factors or any(k <= 0 for k in factors):
            raise ConfigError(f"--lambda-sweep: got {args.lambda_sweep!r}; expected positive numbers, e.g. 0.3,1,3.")
        pick["strategies"] = sweep_arms(pick["strategies"], factors)
    spec = GridSpec(preset=args.preset, **pick, seeds=args.seeds, data=args.data, device=args.device)
    spec.validate()
    out = Path(args.out)
    if args.report_only:
        import pyarrow.parquet as pq

        if not (out / "results.parquet").is_file():
            raise DataError(f"--report-only: {str(out / 'results.parquet')!r} does not exist; run the grid first.")
        rows = pq.read_table(out / "results.parquet").to_pylist()
        if (out / "pilot.json").is_file():
            import json

            spec.lambda_r = {t: v["lambda_r"] for t, v in json.loads((out / "pilot.json").read_text()).items()}
    else:
        rows = run_grid(spec, out)
    md = write_report(out, spec, rows, command="gradprom " + shlex.join(sys.argv[1:]))
    print(f"report: {md}")
    print(f"results: {out / 'results.parquet'}")
    return 0
