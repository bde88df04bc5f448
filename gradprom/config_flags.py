"""The command line's config options, shared by `gradprom train` and `gradprom federate`: `--config FILE`,
one flag per config field (from a table), and `--set FIELD=VALUE`, merged in that order over a base."""

from __future__ import annotations

import argparse
from typing import Any

# flag -> (dotted config field, type, help); flags not given leave the config file's values alone
FlagTable = dict[str, tuple[str, type, str]]


def add_config_options(p: argparse.ArgumentParser, flags: FlagTable, *, config_help: str, set_help: str) -> None:
    """Add --config, one --flag per table entry (help ends with its field) and a repeatable --set."""
    p.add_argument("--config", metavar="FILE", help=config_help)
    for flag, (field, typ, help_) in flags.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None,
                       metavar=flag.split("_")[-1].upper(), help=f"{help_} [{field}]")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help=set_help)


def merged_config(args: argparse.Namespace, flags: FlagTable, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw config: base <- --config file <- --set options <- the flags that were given."""
    from gradprom.platform.config import dotted_override, load_config_file, merge, parse_set_option

    raw: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        raw = merge(raw, load_config_file(args.config))
    for s in getattr(args, "sets", []):
        raw = merge(raw, parse_set_option(s))
    for flag, (field, _, _) in flags.items():
        v = getattr(args, flag, None)
        if v is not None:
            raw = merge(raw, dotted_override(field, v))
    return raw
