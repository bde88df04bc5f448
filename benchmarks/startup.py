"""How long until a real command does something? `gradprom train` (the default config: 64² phantoms, 1024 train
images) for one epoch of 4 steps, and `gradprom evaluate` of that run, each as a fresh process, for two checkouts
side by side (this one and a base commit), with an empty phantom cache (cold) and then a filled one (warm).

  first step  seconds from launching the process to the start of the first training step
  train       the whole `train` command
  evaluate    the whole `evaluate` command (test split of the run it trained)
  data        in-process seconds of `build_datasets` on the default config (the phantoms: generated, or read
              from the cache), without the imports; repeated `--data-repeats` times, as it is the least noisy part
  floor       what is not GradProm's in a first step: `import torch` with torch's first optimizer (it imports
              torch._dynamo), and `import monai` (its __init__ loads every subpackage)

The first step is timed by a small launcher that wraps TrainStep.__call__ before running the CLI's main(), so the
same measurement applies to both checkouts. Each checkout gets its own empty cache directory (GRADPROM_CACHE_DIR),
runs alternate between the checkouts (machine noise hits both alike), and the table shows medians.

Usage:
  git archive <base-commit> | tar -x -C /tmp/gradprom-base      # a scratch copy of the base, outside the repo
  python benchmarks/startup.py --base /tmp/gradprom-base [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = """
import sys, time
t0 = float(sys.argv[1])
from gradprom.platform import step as _step
_orig = _step.TrainStep.__call__
def _timed(self, *a, **k):
    if not getattr(_step, "_first_reported", False):
        _step._first_reported = True
        print(f"FIRST_STEP {time.time() - t0:.3f}", file=sys.stderr, flush=True)
    return _orig(self, *a, **k)
_step.TrainStep.__call__ = _timed
from gradprom.cli import main
sys.exit(main(sys.argv[2:]))
"""


DATA_LAUNCHER = """
import time
from gradprom.platform.config import build_config
from gradprom.platform.data.sources import build_datasets
cfg = build_config({})
t = time.time()
build_datasets(cfg)
print(f"DATA {time.time() - t:.3f}")
"""


# the part of any first step that is not GradProm's: torch's import and its first optimizer (which imports
# torch._dynamo, through torch._disable_dynamo on Optimizer.add_param_group), then `import monai`, whose
# __init__ loads every MONAI subpackage whatever one imports from it
FLOOR_LAUNCHER = """
import time
t0 = time.perf_counter()
import torch
torch.optim.Adam([torch.zeros(1, requires_grad=True)])
t1 = time.perf_counter()
import monai
t2 = time.perf_counter()
print(f"FLOOR {t1 - t0:.3f} {t2 - t1:.3f}")
"""


def floor_times() -> tuple[float, float]:
    """(torch import + first optimizer, MONAI import) in seconds, in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", FLOOR_LAUNCHER], capture_output=True, text=True, timeout=600,
                          check=True)
    torch_s, monai_s = proc.stdout.split("FLOOR")[1].split()
    return float(torch_s), float(monai_s)


def data_time(checkout: Path, cache: Path) -> float:
    """Seconds of build_datasets(default config) in a fresh process from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "GRADPROM_CACHE_DIR": str(cache), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", DATA_LAUNCHER], capture_output=True, text=True, env=env,
                          cwd=checkout, timeout=900, check=True)
    return float(proc.stdout.split("DATA")[1])


def run(checkout: Path, cache: Path, args: list[str]) -> tuple[float, float | None]:
    """(wall seconds, first-step seconds or None) of one CLI command run from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "GRADPROM_CACHE_DIR": str(cache), "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, repr(t0), *args], capture_output=True, text=True,
                          env=env, cwd=checkout, timeout=1800)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: gradprom {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    first = next((float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("FIRST_STEP")), None)
    return wall, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="a checkout of the base commit")
    ap.add_argument("--repeats", type=int, default=1, help="cold+warm rounds per checkout")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measured processes")
    ap.add_argument("--data-repeats", type=int, default=3, help="cold+warm rounds of the data measurement")
    ap.add_argument("--only-data", action="store_true", help="only the data measurement (no train/evaluate)")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    checkouts = {"base": a.base.resolve(), "this": ROOT}
    results: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gradprom-startup-") as tmp:
        for r in range(0 if a.only_data else a.repeats):
            caches = {name: Path(tmp) / f"cache-{name}-{r}" for name in checkouts}
            for state in ("cold", "warm"):
                for name, checkout in checkouts.items():
                    out = Path(tmp) / f"runs-{name}-{r}-{state}"
                    wall, first = run(checkout, caches[name], ["train", "--epochs", "1", "--max-steps-per-epoch", "4",
                                                               "--out", str(out), "--name", "bench"])
                    results.setdefault((name, state, "first step"), []).append(first if first is not None else
                                                                                float("nan"))
                    results.setdefault((name, state, "train"), []).append(wall)
                    if state == "warm":  # evaluate: cold = a fresh cache, warm = the filled one
                        for ev_state, cache in (("cold", Path(tmp) / f"cache-ev-{name}-{r}"), ("warm", caches[name])):
                            wall, _ = run(checkout, cache, ["evaluate", str(out / "bench")])
                            results.setdefault((name, ev_state, "evaluate"), []).append(wall)
                    print(f"round {r + 1} {state} {name}: done", file=sys.stderr, flush=True)
        for r in range(a.data_repeats):
            for name, checkout in checkouts.items():
                cache = Path(tmp) / f"cache-data-{name}-{r}"
                results.setdefault((name, "cold", "data"), []).append(data_time(checkout, cache))
                results.setdefault((name, "warm", "data"), []).append(data_time(checkout, cache))

    floors = [floor_times() for _ in range(max(a.repeats, 1))]

    def med(name: str, state: str, what: str) -> float:
        return statistics.median(results[(name, state, what)])

    print(f"\nstart-up, seconds (median of {a.repeats}, data: of {a.data_repeats}; OMP_NUM_THREADS={a.threads}; load "
          f"average {os.getloadavg()[0]:.1f})")
    print(f"{'measure':<22}{'base':>9}{'this':>9}{'this/base':>11}")
    for what in ("first step", "train", "evaluate", "data"):
        for state in ("cold", "warm"):
            if ("base", state, what) not in results:
                continue
            b, t = med("base", state, what), med("this", state, what)
            print(f"{what + ' (' + state + ')':<22}{b:>9.1f}{t:>9.1f}{t / b:>11.2f}")
    torch_s, monai_s = (statistics.median(f[i] for f in floors) for i in (0, 1))
    print(f"\nnot GradProm's (fresh process, median of {len(floors)}): import torch + its first optimizer "
          f"{torch_s:.1f} s, then import monai {monai_s:.1f} s")
    if ("this", "warm", "first step") in results:
        beyond = med("this", "warm", "first step") - torch_s
        print(f"this checkout's warm first step beyond torch's own: {beyond:.1f} s (of which MONAI's import "
              f"{monai_s:.1f} s)")


if __name__ == "__main__":
    main()
