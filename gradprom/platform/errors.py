"""User-facing errors: the CLI prints these as one paragraph and exits non-zero, without a traceback."""


class GradPromError(Exception):
    """A problem with the user's input (config, files, data) that the user can fix."""


class ConfigError(GradPromError):
    """An invalid configuration value; the message names the field, the value and what is allowed."""


class DataError(GradPromError):
    """Unreadable, malformed or inconsistent data; the message names the file and what is expected."""


class TrainingError(GradPromError):
    """Training cannot go on (e.g. too many non-finite steps in a row); the message names the step."""


def cut(value: object, limit: int = 120) -> str:
    """repr of a user's value for an error message, cut to `limit` characters (a CSV cell, a spec, a name can be
    megabytes long; the message stays one readable paragraph)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def state_dict_problem(e: BaseException) -> str:
    """The useful part of load_state_dict's error: the first mismatches, not just its "Error(s) in loading
    state_dict for ResNet:" heading."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = lines[1:3] if len(lines) > 1 else lines
    text = "; ".join(detail) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
    return text[:400] + ("..." if len(text) > 400 else "")
