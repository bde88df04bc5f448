"""What does running trials through Ray Tune + Optuna cost over a bare Optuna study?

The same N short GradProm trials (identical sampled values: enqueued in the bare study, `points_to_evaluate`
for Tune's OptunaSearch) run one at a time:
  bare   an Optuna study in this process; each trial calls the engine's `train` and `trial.report`s per epoch
  tune   `gradprom tune`'s trainable on a private local Ray instance (one trial at a time, FIFO, no ASHA)
and prints the wall time per trial of each and their ratio (target <= 1.10 once Ray has started); Ray's
start-up is timed separately. The Tune side is set up as `gradprom tune` sets it up (trial processes reused
between trials, `reuse_actors=True`), and includes what a trial costs in Ray: the first trial's worker process
(importing torch and MONAI), result reporting and Tune's experiment checkpoints.

Usage: python benchmarks/tune_overhead.py [--trials 4] [--epochs 2] [--steps 16] [--size 32] [--train 256]
Larger --steps makes each trial longer, so the fixed per-trial cost of Ray weighs less.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


def base_config(args: argparse.Namespace) -> dict:
    """The run config every trial starts from."""
    return {"task": "classification", "seed": 0,
            "data": {"num_train": args.train, "num_val": 32, "num_test": 32, "image_size": args.size,
                     "batch_size": 16},
            "model": {"enhancer_channels": [8, 16], "recognizer_channels": [8, 16]},
            "optim": {"epochs": args.epochs, "max_steps_per_epoch": args.steps},
            "run": {"device": "cpu", "num_threads": 1, "figures_every_epoch": False}}


def points(n: int) -> list[dict]:
    """N fixed trial configurations (the same for both sides)."""
    import random

    rng = random.Random(0)
    return [{"tau": rng.uniform(0, 0.5), "lambda_e": 10 ** rng.uniform(-0.3, 0.3),
             "lambda_r": 10 ** rng.uniform(-2, 0), "lr": 10 ** rng.uniform(-4, -2)} for _ in range(n)]


def run_bare(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(seconds for the N trials, seconds until the first one finished) as a bare Optuna study in this process."""
    import optuna

    from gradprom.platform.config import build_config
    from gradprom.platform.loop import train
    from gradprom.tuning.space import apply_params

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for p in points(args.trials):
        study.enqueue_trial(p)

    def objective(trial) -> float:
        params = {"tau": trial.suggest_float("tau", 0.0, 0.5),
                  "lambda_e": trial.suggest_float("lambda_e", 0.5, 2.0, log=True),
                  "lambda_r": trial.suggest_float("lambda_r", 0.01, 1.0, log=True),
                  "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}
        raw = apply_params(base_config(args), params)
        raw["run"].update(out=str(out), name=f"bare-{trial.number}")
        last = {}

        def report(epoch, train_row, val_row):
            trial.report(val_row["psnr"], epoch)
            last["psnr"] = val_row["psnr"]

        train(build_config(raw), progress=False, on_epoch=report)
        return last["psnr"]

    done: list[float] = []
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=args.trials, callbacks=[lambda study, trial: done.append(time.perf_counter())])
    return time.perf_counter() - t0, done[0] - t0


DONE: list[float] = []  # completion times of Tune's trials (its callbacks run in this process)


def _completions_callback():
    from ray import tune

    class Completions(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            DONE.append(time.perf_counter())

    return Completions


def run_tune(args: argparse.Namespace, out: Path) -> tuple[float, float, float]:
    """(Ray start-up, seconds for the N trials, seconds until the first one finished) through Ray Tune + Optuna."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from gradprom.platform.config import build_config
    from gradprom.tuning.space import TuneSpec, param_space
    from gradprom.tuning.trainable import run_trial

    Completions = _completions_callback()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    try:
        base = build_config(base_config(args)).to_dict()
        fn = tune.with_resources(tune.with_parameters(run_trial, base=base, exp_dir=str(out), max_epochs=args.epochs),
                                 {"cpu": 1})
        search = OptunaSearch(metric="psnr", mode="max", seed=0, points_to_evaluate=points(args.trials))
        tuner = tune.Tuner(fn, param_space=param_space(TuneSpec()),
                           tune_config=tune.TuneConfig(search_alg=search, num_samples=args.trials,
                                                       max_concurrent_trials=1, reuse_actors=True),
                           run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=0,
                                                     callbacks=[Completions()]))
        t1 = time.perf_counter()
        grid = tuner.fit()
        elapsed = time.perf_counter() - t1
        assert not grid.errors, grid.errors
        return startup, elapsed, DONE[0] - t1
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16, help="training steps per epoch")
    ap.add_argument("--size", type=int, default=32, help="image side (px)")
    ap.add_argument("--train", type=int, default=256, help="training images")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bare, bare_first = run_bare(args, Path(tmp) / "bare")
        startup, tuned, tune_first = run_tune(args, Path(tmp) / "tune")
    n = args.trials
    print(f"{n} trials x {args.epochs} epochs x {args.steps} steps ({args.size} px, batch 16), one at a time")
    print(f"{'':24s}{'total (s)':>12s}{'per trial (s)':>16s}{'first trial (s)':>18s}{'per later trial (s)':>22s}")
    for name, total, first in (("bare Optuna study", bare, bare_first), ("Ray Tune + Optuna", tuned, tune_first)):
        print(f"{name:24s}{total:12.1f}{total / n:16.2f}{first:18.2f}{(total - first) / max(n - 1, 1):22.2f}")
    print(f"overhead ratio per trial (Tune / bare), all {n} trials: {tuned / bare:.2f}   (target <= 1.10)")
    if n > 1:
        print(f"overhead ratio per trial after the first (the trial process is reused): "
              f"{(tuned - tune_first) / (bare - bare_first):.2f}")
    print(f"Ray start-up (ray.init, not in the ratios): {startup:.1f} s; the first Tune trial also starts its "
          f"worker process: {tune_first - bare_first:+.1f} s against the bare first trial")


if __name__ == "__main__":
    main()
