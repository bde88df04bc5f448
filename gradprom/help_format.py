"""The help formatter of the hand-written subcommands (evaluate, demo, data, experiment): each option's default
appended, except where there is none (None, False) or the help text already says it."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Like argparse.ArgumentDefaultsHelpFormatter, without "(default: None)" and "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (not action.option_strings or "default" in text or d is None or d is False or d is argparse.SUPPRESS
                or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"
