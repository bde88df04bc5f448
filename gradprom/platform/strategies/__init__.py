"""Strategies: how the enhancer's update is built from g_e and g_r. Adding one touches its own module plus one
line of `_CLASSES` below; its capabilities (config name, legend label, help, layer/output-space support) are
attributes of its class, and the config checks, the CLI help and the demo list are derived from them.

Nothing here imports torch at import time (the strategy modules import it inside their functions), so the
command line can build its help from this registry without paying torch's import.
"""

from __future__ import annotations

import ast
from typing import Any

from gradprom.platform.errors import ConfigError
from gradprom.platform.strategies.base import Decision, ParamLayout, Strategy, cosine, segment_cosines
from gradprom.platform.strategies.cosine_weighted import CosineWeighted
from gradprom.platform.strategies.enhance_only import EnhanceOnly
from gradprom.platform.strategies.gradprom import GradProm
from gradprom.platform.strategies.joint import Joint
from gradprom.platform.strategies.torchjd_adapter import PCGrad, TorchJD

__all__ = ["Decision", "ParamLayout", "Strategy", "cosine", "segment_cosines", "GradProm", "Joint",
           "EnhanceOnly", "CosineWeighted", "TorchJD", "PCGrad", "make_strategy", "parse_strategy",
           "strategy_class", "expand_preset", "REGISTRY", "STRATEGY_NAMES", "STRATEGY_PRESETS",
           "OUTPUT_SPACE_STRATEGIES", "LAYER_STRATEGIES", "ADDITIVE_STRATEGIES", "strategy_help"]

# the registered strategies, baselines first (this is also the demo's order)
_CLASSES: tuple[type[Strategy], ...] = (EnhanceOnly, Joint, PCGrad, CosineWeighted, GradProm)
REGISTRY: dict[str, type[Strategy]] = {c.name: c for c in _CLASSES}
STRATEGY_NAMES = tuple(REGISTRY) + ("torchjd:NAME",)
# strategies that depend on (g_e, g_r) only through their cosine, so they also work on upstream gradients
OUTPUT_SPACE_STRATEGIES = frozenset(n for n, c in REGISTRY.items() if c.output_space)
LAYER_STRATEGIES = frozenset(n for n, c in REGISTRY.items() if c.supports_layer)
ADDITIVE_STRATEGIES = frozenset(n for n, c in REGISTRY.items() if c.additive)

# named variants: a name standing for a strategy plus other `gradprom` fields. They are the experiment grid's
# arms, and `gradprom.strategy` accepts them too (the config expands them, see `expand_preset`).
STRATEGY_PRESETS: dict[str, dict[str, Any]] = {
    "gradprom_layer": {"strategy": "gradprom", "granularity": "layer"},
    "gradprom_output": {"strategy": "gradprom", "gate_space": "output"},
    "gradprom_matched": {"strategy": "gradprom", "scale": "match"},
    "gradprom_separate": {"strategy": "gradprom", "moments": "separate"},
    "gradprom_precond": {"strategy": "gradprom", "gate_metric": "preconditioned"},
}


def strategy_help() -> str:
    """One line listing what `--strategy` accepts (registry names, torchjd:NAME, then the presets)."""
    return " | ".join(STRATEGY_NAMES) + "; or a preset: " + " | ".join(STRATEGY_PRESETS)


def expand_preset(section: dict[str, Any]) -> dict[str, Any]:
    """A `gradprom` section whose strategy is a preset name -> the fields it stands for (others kept).

    A field the section also sets explicitly to a different value is a user mistake (ConfigError)."""
    preset = STRATEGY_PRESETS.get(section.get("strategy"))  # type: ignore[arg-type]
    if preset is None:
        return section
    name = section["strategy"]
    for key, value in preset.items():
        if key != "strategy" and key in section and section[key] != value:
            raise ConfigError(f"config field `gradprom.strategy`: {name!r} means `{key}: {value}`, but "
                              f"`gradprom.{key}: {section[key]}` was also given; drop one of them, or write "
                              f"`strategy: {preset['strategy']}` with the fields you want.")
    return {**section, **preset}


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
    if spec in REGISTRY:
        return spec, {}
    if isinstance(spec, str) and spec.startswith("torchjd:"):
        _, _, rest = spec.partition(":")
        name, _, args = rest.partition(":")
        kwargs = _parse_kwargs(args, spec)
        try:
            TorchJD(name, **kwargs)
        except ValueError as e:
            raise ConfigError(f"config field `gradprom.strategy`: got {spec!r}; {e}") from None
        return f"torchjd:{name}", kwargs
    if spec in STRATEGY_PRESETS:
        fields = ", ".join(f"{k}: {v}" for k, v in STRATEGY_PRESETS[spec].items())
        raise ConfigError(f"config field `gradprom.strategy`: {spec!r} is a preset ({fields}); a full config "
                          f"expands it, a bare strategy spec must be one of {', '.join(STRATEGY_NAMES)}.")
    raise ConfigError(f"config field `gradprom.strategy`: got {spec!r}; choose one of "
                      f"{', '.join(STRATEGY_NAMES)} (e.g. torchjd:UPGrad, torchjd:MGDA, torchjd:CAGrad:c=0.5), "
                      f"or a preset: {', '.join(STRATEGY_PRESETS)}.")


def strategy_class(spec: str) -> type[Strategy]:
    """The class a (validated) spec builds, for reading its capabilities."""
    return REGISTRY.get(spec, TorchJD)


def make_strategy(spec: str, tau: float = 0.0, granularity: str = "global") -> Strategy:
    """Build the strategy named by `spec` (see STRATEGY_NAMES)."""
    name, kwargs = parse_strategy(spec)
    if name in REGISTRY:
        return REGISTRY[name].from_config(tau, granularity)
    return TorchJD(name.split(":", 1)[1], label=spec, **kwargs)
