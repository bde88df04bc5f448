"""Seeded, composable degradations that turn a clean image x_hq into the enhancer's input x_lq.

A spec is a `+`-joined list of steps, each `name[:key=value,...]`, applied left to right:
  gaussian:sigma=0.1        additive white Gaussian noise of standard deviation sigma (intensity units)
  poisson:dose=100          low-dose (quantum) noise: Poisson(dose * x) / dose, so Var = x / dose
  blur:sigma=1.0            Gaussian blur, sigma in pixels (reflect padding)
  downsample:factor=2       area down-sampling by 2 or 4 (for super-resolution)
Shorthands: gaussian, lowdose (= poisson:dose=100), blur, sr2, sr4, none.
Example: "blur:sigma=1+downsample:factor=2+gaussian:sigma=0.02".

Noise is not clipped to [0, 1]: real scanner noise is not, and clipping would bias its statistics.
Each call takes a torch.Generator, so the same (seed, epoch, index) always gives the same degraded image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from gradprom.platform.errors import ConfigError, cut

SHORTHANDS = {
    "gaussian": "gaussian:sigma=0.1",
    "lowdose": "poisson:dose=100",
    "blur": "blur:sigma=1.0",
    "sr2": "downsample:factor=2",
    "sr4": "downsample:factor=4",
    "none": "",
}


@dataclass
class Gaussian:
    """Additive white Gaussian noise."""

    sigma: float = 0.1
    scale = 1

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return x + self.sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)


@dataclass
class Poisson:
    """Low-dose quantum noise: counts ~ Poisson(dose * x), image = counts / dose."""

    dose: float = 100.0
    scale = 1

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return torch.poisson(x.clamp_min(0.0) * self.dose, generator=gen) / self.dose


@dataclass
class Blur:
    """Separable Gaussian blur with a kernel of radius ceil(3 sigma)."""

    sigma: float = 1.0
    scale = 1

    def kernel(self) -> Tensor:
        r = max(1, math.ceil(3 * self.sigma))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / self.sigma) ** 2)
        return k / k.sum()

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.sigma == 0:
            return x
        k = self.kernel().to(x.dtype)
        r = (k.numel() - 1) // 2
        c, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        # reflect padding needs r < side; a kernel wider than a small image pads by replicating the edge
        mode_w, mode_h = ("reflect" if r < w else "replicate"), ("reflect" if r < h else "replicate")
        y = x.unsqueeze(0)
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode_w), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode_h), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return y.squeeze(0)


@dataclass
class Downsample:
    """Area down-sampling by an integer factor (the image side must be divisible by it)."""

    factor: int = 2

    @property
    def scale(self) -> int:
        return self.factor

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"downsample:factor={self.factor} needs an image side divisible by {self.factor}, "
                             f"got {h}x{w}")
        return F.avg_pool2d(x.unsqueeze(0), self.factor).squeeze(0)


_STEPS = {"gaussian": Gaussian, "poisson": Poisson, "blur": Blur, "downsample": Downsample}
_LIMITS = {  # key -> (type, lower bound, upper bound, inclusive lower)
    "sigma": (float, 0.0, 10.0, True),
    "dose": (float, 0.0, 1e9, False),
    "factor": (int, 2, 4, True),
}


@dataclass
class Degradation:
    """A pipeline of steps; `scale` is the total down-sampling factor (1 for denoising/deblurring)."""

    steps: list = field(default_factory=list)
    spec: str = ""

    @property
    def scale(self) -> int:
        s = 1
        for step in self.steps:
            s *= step.scale
        return s

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Degrade one clean image (C, H, W)."""
        for step in self.steps:
            x = step(x, gen)
        return x

    def __str__(self) -> str:
        return self.spec or "none"


def parse_degradation(spec: str) -> Degradation:
    """Parse a degradation spec (see the module docstring); raises ConfigError naming the bad part."""
    where = "config field `data.degradation`"
    text = SHORTHANDS.get(spec.strip(), spec.strip())
    steps = []
    for part in filter(None, (SHORTHANDS.get(p.strip(), p.strip()) for p in text.split("+"))):
        name, _, args = part.partition(":")
        if name not in _STEPS:
            raise ConfigError(f"{where}: got {cut(spec)}; unknown step {cut(name)}. Steps: {', '.join(_STEPS)}; "
                              f"shorthands: {', '.join(SHORTHANDS)} (e.g. 'blur:sigma=1+gaussian:sigma=0.05').")
        kwargs = {}
        for kv in filter(None, (a.strip() for a in args.split(","))):
            key, eq, val = kv.partition("=")
            key = key.strip()
            allowed = {"gaussian": ["sigma"], "poisson": ["dose"], "blur": ["sigma"], "downsample": ["factor"]}[name]
            if not eq or key not in allowed:
                takes = ", ".join(f"{a}=<value>" for a in allowed)
                raise ConfigError(f"{where}: got {cut(spec)}; step {name!r} takes {takes}, found {cut(kv)}.")
            typ, lo, hi, incl = _LIMITS[key]
            try:
                v = typ(float(val)) if typ is int and float(val).is_integer() else typ(val)
            except ValueError:
                raise ConfigError(f"{where}: got {cut(spec)}; {name}:{key} must be a {typ.__name__}, "
                                  f"found {cut(val)}.") from None
            if key == "factor" and v not in (2, 4):
                raise ConfigError(f"{where}: got {cut(spec)}; downsample:factor must be 2 or 4, found {v}.")
            if not ((v >= lo if incl else v > lo) and v <= hi):
                raise ConfigError(f"{where}: got {cut(spec)}; {name}:{key} must be in "
                                  f"{'[' if incl else '('}{lo}, {hi}], found {v}.")
            kwargs[key] = v
        steps.append(_STEPS[name](**kwargs))
    return Degradation(steps, spec=spec.strip())
