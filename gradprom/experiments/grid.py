"""The experiment grid: strategies x tasks x degradations x seeds, and the presets that size it.

A cell is one training run. Every cell of one (task, degradation, seed) sees the same images and the same
degraded inputs, so strategies are compared on identical data (paired comparisons).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradprom.platform.strategies import REGISTRY, STRATEGY_PRESETS

# name in the report -> gradprom config section overrides: every registered strategy, then the presets
# (gradprom_layer, gradprom_output and the Adam-aware gate variants gradprom_matched/_separate/_precond)
STRATEGIES: dict[str, dict[str, Any]] = {**{n: {"strategy": n} for n in REGISTRY}, **STRATEGY_PRESETS}
# the arms a grid runs unless --strategies says otherwise; the quick preset's 30-minute budget was sized for
# these seven, so the Adam-aware variants (ADAM_VARIANTS) are opt-in: --strategies gradprom,gradprom_matched,...
ADAM_VARIANTS = ("gradprom_matched", "gradprom_separate", "gradprom_precond")
DEFAULT_STRATEGIES = tuple(n for n in STRATEGIES if n not in ADAM_VARIANTS)
GRADPROM = "gradprom"  # the variant the paired tests compare against every baseline
BASELINES = ("enhance_only", "joint", "pcgrad", "cosine_weighted")

DEGRADATIONS: dict[str, str] = {
    "gaussian": "gaussian:sigma=0.1",
    "lowdose": "poisson:dose=100",
    "sr2": "downsample:factor=2",
}
TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class Preset:
    """How big each cell is."""

    image_size: int
    num_train: int
    num_val: int
    num_test: int
    epochs: int
    batch_size: int
    enhancer_channels: tuple[int, ...]
    recognizer_channels: tuple[int, ...]
    frozen_epochs: int  # epochs of the independent clean recognizer
    seeds: int = 3
    threads: int | None = None
    # the task's loss weight in E's objective, the same for every strategy of a cell. Segmentation's Dice + CE
    # gradient at x_hat is much weaker than cross-entropy's: at 0.1 joint training did not move PSNR at all on
    # the phantoms (no conflict to study), at 1.0 it cost about 3 dB (measured on seeds 0 and 1).
    lambda_r: tuple[tuple[str, float], ...] = (("classification", 0.1), ("segmentation", 1.0))
    # the testbed (platform/data/phantoms.py): generator version and texture contrast of the phantoms
    phantom_version: int = 1
    texture_contrast: float = 0.06
    # epochs of a clean recognizer of the cells' own architecture that every cell's R starts from
    # (recognizer_mode stays joint: R is fine-tuned on E's output); 0: R starts from scratch
    warm_start_epochs: int = 0
    recognizer_norm: str = "batch"  # instance: g_r of one image does not depend on its batch (audit D13)
    # None: lambda_r above. A number t: a pilot on the training split (one joint cell of seed 0, never the
    # test split) measures the median ‖g_r‖/‖g_e‖ at lambda_r = 1 and sets lambda_r = t / that median, the
    # same rule for every task (g_r is linear in lambda_r); pilot.json records it (runner.calibrate_lambda_r)
    lambda_r_target_ratio: float | None = None
    pilot_epochs: int = 2


PRESETS = {
    # <= 30 minutes on 2 CPU cores for the whole default grid (126 cells)
    "quick": Preset(image_size=48, num_train=640, num_val=64, num_test=128, epochs=6, batch_size=32,
                    enhancer_channels=(8, 16, 32), recognizer_channels=(8, 16, 32), frozen_epochs=10),
    # full size, for a GPU
    "paper": Preset(image_size=128, num_train=8192, num_val=512, num_test=1024, epochs=40, batch_size=32,
                    enhancer_channels=(32, 64, 128, 256), recognizer_channels=(32, 64, 128, 256), frozen_epochs=40),
    # the medium evidence grid (evidence audit §5): phantoms v2 whose class the clean judge reads (>= 0.9) and
    # the noise hides, R warm-started from a clean recognizer, lambda_r calibrated by the norm-ratio pilot,
    # 6 seeds (sign-flip p down to 2/64), 18 epochs x 20 steps = 360 steps per cell, 256 test images. Cost:
    # the audit measured 0.088 s per optimizer step at 48² on 2 idle cores (quick preset, evaluation
    # included); the gate variants cost <= 5% more per step (benchmarks/step_overhead.py). So 360 steps + ~3 s
    # evaluation ≈ 35 s per cell; the default medium grid (classification, gaussian + lowdose,
    # MEDIUM_STRATEGIES, 6 seeds: 96 cells) ≈ 56 min, plus ~2 min for the two clean recognizers (judge 40
    # epochs, warm start 20) and the 2-epoch pilot: ≈ 58 min. benchmarks/experiment_cost.py re-measures it.
    # Run: gradprom experiment --preset medium --out experiments/medium
    # texture_contrast 0.10 by testbed.CALIBRATION_RULE on seed 0's train/val split (gaussian sigma 0.1, 640 train,
    # 15 epochs; `python -m gradprom.experiments.testbed`): 0.08 -> clean 0.977, degraded 0.352, trained on
    # degraded 0.516 (majority 0.367, fails (b)); 0.10 -> 0.984 / 0.359 / 0.609: chosen
    "medium": Preset(image_size=48, num_train=640, num_val=64, num_test=256, epochs=18, batch_size=32,
                     enhancer_channels=(8, 16, 32), recognizer_channels=(8, 16, 32), frozen_epochs=40, seeds=6,
                     phantom_version=2, texture_contrast=0.10, warm_start_epochs=20, recognizer_norm="instance",
                     lambda_r_target_ratio=0.5),
    # tests: seconds per cell
    "micro": Preset(image_size=32, num_train=64, num_val=16, num_test=32, epochs=2, batch_size=16,
                    enhancer_channels=(4, 8), recognizer_channels=(4, 8), frozen_epochs=2, seeds=2),
}


# what a preset runs when the command line names no strategies / tasks / degradations
MEDIUM_STRATEGIES = ("enhance_only", "joint", "pcgrad", "cosine_weighted", "gradprom", *ADAM_VARIANTS)
PRESET_AXES: dict[str, dict[str, tuple[str, ...]]] = {
    "medium": {"strategies": MEDIUM_STRATEGIES, "tasks": ("classification",), "degradations": ("gaussian", "lowdose")},
}


def split_arm(name: str) -> tuple[str, float]:
    """'gradprom@3' -> ('gradprom', 3.0): an arm of the λ_r sweep runs a strategy at a multiple of λ_r."""
    base, _, factor = name.partition("@")
    try:
        return base, float(factor) if factor else 1.0
    except ValueError:
        return name, float("nan")


def sweep_arms(strategies: list[str], factors: list[float]) -> list[str]:
    """Each strategy at each λ_r factor ('name@k'; factor 1 keeps the plain name); enhance_only has no λ_r."""
    out = []
    for s in strategies:
        for k in ([1.0] if s == "enhance_only" else factors):
            out.append(s if k == 1.0 else f"{s}@{k:g}")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    task: str
    degradation: str
    strategy: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}-{self.degradation}-{self.strategy}-s{self.seed}"


@dataclass
class GridSpec:
    """What to run: the axes, the preset and the data."""

    preset: str = "quick"
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    degradations: list[str] = field(default_factory=lambda: list(DEGRADATIONS))
    seeds: int | list[int] | None = None  # a count (0..n-1), the seeds themselves, or None: the preset's count
    data: str = "phantoms"
    device: str = "auto"
    lambda_r: dict[str, float] | None = None  # per task, set by the pilot (runner.calibrate_lambda_r)

    @classmethod
    def for_preset(cls, preset: str, **kw: Any) -> GridSpec:
        """The preset's own axes (PRESET_AXES; the quick defaults otherwise), overridden by `kw`."""
        axes = {k: list(v) for k, v in PRESET_AXES.get(preset, {}).items()}
        return cls(preset=preset, **{**axes, **kw})

    def cells(self) -> list[Cell]:
        """Cells ordered so that each (task, degradation, seed) group finishes together."""
        return [Cell(t, d, s, seed) for t, d, seed, s in
                itertools.product(self.tasks, self.degradations, self.seed_list(), self.strategies)]

    def seed_list(self) -> list[int]:
        """The seeds the grid runs."""
        if isinstance(self.seeds, list):
            return list(self.seeds)
        return list(range(self.seeds or PRESETS[self.preset].seeds))

    def validate(self) -> None:
        """Unknown names are user mistakes: raise ConfigError naming them."""
        from gradprom.platform.errors import ConfigError

        bad_arms = [n for n in self.strategies if split_arm(n)[0] in STRATEGIES and not split_arm(n)[1] > 0]
        if bad_arms:
            raise ConfigError(f"experiment strategy: got {bad_arms}; a λ_r sweep arm is NAME@FACTOR with a positive "
                              f"number, e.g. gradprom@0.3.")
        for axis, names, known in (("strategy", [split_arm(n)[0] for n in self.strategies], STRATEGIES),
                                   ("task", self.tasks, TASKS), ("degradation", self.degradations, DEGRADATIONS),
                                   ("preset", [self.preset], PRESETS)):
            bad = [n for n in names if n not in known]
            if bad or not names:
                raise ConfigError(f"experiment {axis}: got {bad or names}; choose from {', '.join(known)}.")
        if isinstance(self.seeds, list):
            if not self.seeds or any(x < 0 for x in self.seeds) or len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"--seeds: got {self.seeds}; expected distinct seeds >= 0, e.g. 0,1,2.")
        elif self.seeds is not None and self.seeds < 1:
            raise ConfigError(f"--seeds: got {self.seeds}; expected a count of at least 1 or a list such as 0,1,2.")

    def task_weight(self, task: str) -> float:
        """lambda_r of `task`: the pilot's when it ran, else the preset's fixed value."""
        if self.lambda_r and task in self.lambda_r:
            return float(self.lambda_r[task])
        return dict(PRESETS[self.preset].lambda_r)[task]

    def cell_config(self, cell: Cell, out: str) -> dict[str, Any]:
        """The engine config (nested dict) of one cell."""
        p = PRESETS[self.preset]
        data: dict[str, Any] = {"source": self.data, "degradation": DEGRADATIONS[cell.degradation],
                                "batch_size": p.batch_size}
        if self.data == "phantoms":
            data.update(image_size=p.image_size, num_train=p.num_train, num_val=p.num_val, num_test=p.num_test)
            if p.phantom_version != 1 or p.texture_contrast != 0.06:  # the quick preset's cells stay as they were
                data.update(phantom_version=p.phantom_version, texture_contrast=p.texture_contrast)
        model: dict[str, Any] = {"enhancer_channels": list(p.enhancer_channels),
                                 "recognizer_channels": list(p.recognizer_channels)}
        if p.recognizer_norm != "batch":
            model["recognizer_norm"] = p.recognizer_norm
        base, factor = split_arm(cell.strategy)
        gp: dict[str, Any] = {**STRATEGIES[base], "lambda_r": self.task_weight(cell.task) * factor}
        if p.warm_start_epochs:
            from .frozen import frozen_path

            gp["recognizer_checkpoint"] = str(frozen_path(Path(out).parent / "frozen", cell.task, "warm"))
        return {"task": cell.task, "seed": cell.seed, "data": data, "model": model, "gradprom": gp,
                "optim": {"epochs": p.epochs},
                "run": {"out": out, "name": cell.id, "device": self.device, "figures_every_epoch": False,
                        "num_threads": p.threads}}
