"""Checkpoints: written atomically, loaded with `weights_only=True` (no pickled code runs on load).

A checkpoint holds the enhancer, recognizer and optimizer states, the epoch and step reached, the best
monitored metric so far, and the resolved config (plain dicts/lists/numbers only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .errors import DataError


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save to a temp file and rename: a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; missing or damaged files raise DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Checkpoint {str(p)!r} does not exist; expected a file written by `gradprom train` "
                        f"(e.g. <run>/checkpoints/latest.pt or best.pt).")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, struct.error (a few junk bytes), ...
        raise DataError(f"Checkpoint {str(p)!r} is damaged or not a GradProm checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); re-run training or pick another checkpoint."
                        ) from None
    if not isinstance(state, dict) or "enhancer" not in state:
        raise DataError(f"Checkpoint {str(p)!r} has no enhancer weights; it was not written by `gradprom train`.")
    return state
