"""The command line's config options, one mechanism for `gradprom train`, `gradprom federate` and `gradprom tune`:
`--config FILE`, one flag per config field (from a table), and `--set FIELD=VALUE`, merged in that order over a
base. Each flag's type, choices, default and help come from the pydantic field it sets (`Field(description=)`
in platform/config.py, federated/config.py), so a field is documented once."""

from __future__ import annotations

import argparse
import difflib
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

# flag -> dotted config field, or (field, a note added to the field's own description)
FlagTable = dict[str, str | tuple[str, str]]


def _models() -> dict[str, type[BaseModel]]:
    """Top-level sections of every config a flag can reach: the engine's, plus `federated` and `tune`."""
    from gradprom.platform.config import Config

    out: dict[str, type[BaseModel]] = {}
    try:
        from gradprom.federated.config import FedConfig
        out["federated"] = FedConfig
    except ImportError:  # pragma: no cover - the federated layer is part of the distribution
        pass
    return {"": Config, **out}


def config_field(dotted: str, extra: dict[str, type[BaseModel]] | None = None):
    """The pydantic FieldInfo of a dotted config field (`gradprom.tau`, `federated.rounds`), or None."""
    models = {**_models(), **(extra or {})}
    head, _, rest = dotted.partition(".")
    model, parts = (models[head], rest.split(".")) if head in models and rest else (models[""], dotted.split("."))
    info = None
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            return None
        sub = _base_type(info.annotation)
        if i < len(parts) - 1:
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                return None
            model = sub
    return info


def suggest(name: str, candidates: list[str]) -> str:
    """' (did you mean `x`?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _base_type(annotation: Any) -> Any:
    """X from X | None; Literal and plain types unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def comma_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (a list-valued field given as one flag)."""
    return [v.strip() for v in text.split(",") if v.strip()]


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None, str]:
    """(argparse type, choices, metavar) of a field annotation."""
    base = _base_type(annotation)
    if typing.get_origin(base) is list:
        return comma_list, None, "A,B,..."
    if typing.get_origin(base) is tuple:
        return str, None, "LO,HI"
    if typing.get_origin(base) is Literal:
        choices = [str(c) for c in typing.get_args(base)]
        return str, choices, "{" + ",".join(choices) + "}"
    if base is bool:
        return (lambda s: s.lower() in ("1", "true", "yes", "on")), None, "BOOL"
    if base is int:
        return int, None, "N"
    if base is float:
        return float, None, "X"
    return str, None, "TEXT"


def _shown_default(info) -> str:
    d = info.get_default(call_default_factory=True)
    if isinstance(d, (list, tuple)):
        return ",".join(map(str, d))
    return "null" if d is None else str(d).lower() if isinstance(d, bool) else str(d)


def add_config_options(p: argparse.ArgumentParser, flags: FlagTable, *, config_help: str, set_help: str,
                       metavars: dict[str, str] | None = None, extra: dict[str, type[BaseModel]] | None = None,
                       typed: bool = True) -> None:
    """Add --config, one --flag per table entry (type, choices, default and help from its field) and --set.

    :param typed: False hands scalar values to the config model as text, so a bad one is reported by the model
        (naming the field) rather than by argparse."""
    p.add_argument("--config", metavar="FILE", help=config_help)
    for flag, entry in flags.items():
        field, note = (entry, "") if isinstance(entry, str) else entry
        info = config_field(field, extra)
        if info is None:
            raise KeyError(f"flag --{flag} names config field {field!r}, which does not exist")
        typ, choices, metavar = _flag_type(info.annotation)
        if not typed and typ is not comma_list:
            typ = str
        desc = info.description or ""
        help_ = "; ".join(t for t in (desc, note) if t) + f" (default: {_shown_default(info)}) [{field}]"
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None, choices=choices,
                       metavar=(metavars or {}).get(flag, metavar), help=help_.replace("%", "%%"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help=set_help)


def given_flags(args: argparse.Namespace, flags: FlagTable) -> list[str]:
    """The table's flags that were given on the command line."""
    return ["--" + f.replace("_", "-") for f in flags if getattr(args, f, None) is not None]


def merged_config(args: argparse.Namespace, flags: FlagTable, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw config: base <- --config file <- --set options <- the flags that were given."""
    from gradprom.platform.config import dotted_override, load_config_file, merge, parse_set_option

    raw: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        raw = merge(raw, load_config_file(args.config))
    for s in getattr(args, "sets", []):
        raw = merge(raw, parse_set_option(s))
    for flag, entry in flags.items():
        field = entry if isinstance(entry, str) else entry[0]
        v = getattr(args, flag, None)
        if v is not None:
            raw = merge(raw, dotted_override(field, v))
    return raw


def source_of(args: argparse.Namespace, flags: FlagTable, first: str = "defaults") -> str:
    """Where a config's values came from, for error messages: defaults + FILE + --set + the flags given."""
    parts = [first] + ([args.config] if getattr(args, "config", None) else [])
    if getattr(args, "sets", None):
        parts.append("--set " + " ".join(args.sets))
    given = given_flags(args, flags)
    if given:
        parts.append("command line: " + " ".join(given))
    return " + ".join(parts)
