"""The experiment grid: strategies x tasks x degradations x seeds, and the presets that size it.

A cell is one training run. Every cell of one (task, degradation, seed) sees the same images and the same
degraded inputs, so strategies are compared on identical data (paired comparisons).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

# name in the report -> gradprom config section overrides
STRATEGIES: dict[str, dict[str, Any]] = {
    "enhance_only": {"strategy": "enhance_only"},
    "joint": {"strategy": "joint"},
    "pcgrad": {"strategy": "pcgrad"},
    "cosine_weighted": {"strategy": "cosine_weighted"},
    "gradprom": {"strategy": "gradprom"},
    "gradprom_layer": {"strategy": "gradprom", "granularity": "layer"},
    "gradprom_output": {"strategy": "gradprom", "gate_space": "output"},
}
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


PRESETS = {
    # <= 30 minutes on 2 CPU cores for the whole default grid (126 cells)
    "quick": Preset(image_size=48, num_train=640, num_val=64, num_test=128, epochs=6, batch_size=32,
                    enhancer_channels=(8, 16, 32), recognizer_channels=(8, 16, 32), frozen_epochs=10),
    # full size, for a GPU
    "paper": Preset(image_size=128, num_train=8192, num_val=512, num_test=1024, epochs=40, batch_size=32,
                    enhancer_channels=(32, 64, 128, 256), recognizer_channels=(32, 64, 128, 256), frozen_epochs=40),
    # tests: seconds per cell
    "micro": Preset(image_size=32, num_train=64, num_val=16, num_test=32, epochs=2, batch_size=16,
                    enhancer_channels=(4, 8), recognizer_channels=(4, 8), frozen_epochs=2, seeds=2),
}


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
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    degradations: list[str] = field(default_factory=lambda: list(DEGRADATIONS))
    seeds: int | list[int] | None = None  # a count (0..n-1), the seeds themselves, or None: the preset's count
    data: str = "phantoms"
    device: str = "auto"

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

        for axis, names, known in (("strategy", self.strategies, STRATEGIES), ("task", self.tasks, TASKS),
                                   ("degradation", self.degradations, DEGRADATIONS), ("preset", [self.preset], PRESETS)):
            bad = [n for n in names if n not in known]
            if bad or not names:
                raise ConfigError(f"experiment {axis}: got {bad or names}; choose from {', '.join(known)}.")
        if isinstance(self.seeds, list):
            if not self.seeds or any(x < 0 for x in self.seeds) or len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"--seeds: got {self.seeds}; expected distinct seeds >= 0, e.g. 0,1,2.")
        elif self.seeds is not None and self.seeds < 1:
            raise ConfigError(f"--seeds: got {self.seeds}; expected a count of at least 1 or a list such as 0,1,2.")

    def cell_config(self, cell: Cell, out: str) -> dict[str, Any]:
        """The engine config (nested dict) of one cell."""
        p = PRESETS[self.preset]
        data: dict[str, Any] = {"source": self.data, "degradation": DEGRADATIONS[cell.degradation],
                                "batch_size": p.batch_size}
        if self.data == "phantoms":
            data.update(image_size=p.image_size, num_train=p.num_train, num_val=p.num_val, num_test=p.num_test)
        return {"task": cell.task, "seed": cell.seed, "data": data,
                "model": {"enhancer_channels": list(p.enhancer_channels),
                          "recognizer_channels": list(p.recognizer_channels)},
                "gradprom": {**STRATEGIES[cell.strategy], "lambda_r": dict(p.lambda_r)[cell.task]},
                "optim": {"epochs": p.epochs},
                "run": {"out": out, "name": cell.id, "device": self.device, "figures_every_epoch": False,
                        "num_threads": p.threads}}
