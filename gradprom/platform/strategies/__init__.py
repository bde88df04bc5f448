"""Strategies: how the enhancer's update is built from g_e and g_r. Adding one touches one file plus the
registry below."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from gradprom.platform.errors import ConfigError
from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy, cosine, segment_cosines
from gradprom.platform.strategies.cosine_weighted import CosineWeighted
from gradprom.platform.strategies.enhance_only import EnhanceOnly
from gradprom.platform.strategies.gradprom import GradProm
from gradprom.platform.strategies.joint import Joint
from gradprom.platform.strategies.torchjd_adapter import TorchJD

__all__ = ["Decision", "ParamLayout", "Strategy", "cosine", "segment_cosines", "GradProm", "Joint",
           "EnhanceOnly", "CosineWeighted", "TorchJD", "make_strategy", "parse_strategy", "STRATEGY_NAMES",
           "OUTPUT_SPACE_STRATEGIES"]

# name -> factory(tau, granularity)
_REGISTRY: dict[str, Callable[[float, str], Strategy]] = {
    "gradprom": lambda tau, gran: GradProm(tau=tau, granularity=gran),
    "joint": lambda tau, gran: Joint(),
    "enhance_only": lambda tau, gran: EnhanceOnly(),
    "cosine_weighted": lambda tau, gran: CosineWeighted(granularity=gran),
    "pcgrad": lambda tau, gran: TorchJD("PCGrad", label="pcgrad"),
}
STRATEGY_NAMES = tuple(_REGISTRY) + ("torchjd:NAME",)
# strategies that depend on (g_e, g_r) only through their cosine, so they also work on upstream gradients
OUTPUT_SPACE_STRATEGIES = frozenset({"gradprom", "joint", "enhance_only", "cosine_weighted"})


def _parse_kwargs(text: str, spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(f"config field `gradprom.strategy`: {spec!r} has {part!r}; "
                              "torchjd arguments are written `torchjd:NAME:key=value,key=value`.")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def parse_strategy(spec: str) -> tuple[str, dict[str, Any]]:
    """Validate a strategy spec; returns (name or torchjd class, kwargs). Raises ConfigError."""
    if spec in _REGISTRY:
        return spec, {}
    if spec.startswith("torchjd:"):
        _, _, rest = spec.partition(":")
        name, _, args = rest.partition(":")
        kwargs = _parse_kwargs(args, spec)
        try:
            TorchJD(name, **kwargs)
        except ValueError as e:
            raise ConfigError(f"config field `gradprom.strategy`: got {spec!r}; {e}") from None
        return f"torchjd:{name}", kwargs
    raise ConfigError(f"config field `gradprom.strategy`: got {spec!r}; choose one of "
                      f"{', '.join(STRATEGY_NAMES)} (e.g. torchjd:UPGrad, torchjd:MGDA, torchjd:CAGrad:c=0.5).")


def make_strategy(spec: str, tau: float = 0.0, granularity: str = "global") -> Strategy:
    """Build the strategy named by `spec` (see STRATEGY_NAMES)."""
    name, kwargs = parse_strategy(spec)
    if name in _REGISTRY:
        return _REGISTRY[name](tau, granularity)
    return TorchJD(name.split(":", 1)[1], label=spec, **kwargs)
