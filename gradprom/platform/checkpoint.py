"""Checkpoints: written atomically, loaded with `weights_only=True` (no pickled code runs on load).

A training checkpoint (`training_state`) holds the enhancer, recognizer and optimizer states, the epoch and
step reached, the best monitored metric so far, the epoch's val metrics and the resolved config (plain
dicts/lists/numbers only). A federation's adds the round and the elapsed time, without optimizers.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradprom.platform.atomic import atomic_path
from gradprom.platform.errors import ConfigError, DataError, state_dict_problem

if TYPE_CHECKING:
    from gradprom.platform.build import Models
    from gradprom.platform.config import Config


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
        raise DataError(f"Checkpoint {str(p)!r} is damaged or not a GradProm checkpoint ({load_problem(e)}); "
                        f"re-run training or pick another checkpoint.") from None
    if not isinstance(state, dict) or "enhancer" not in state:
        raise DataError(f"Checkpoint {str(p)!r} has no enhancer weights; it was not written by `gradprom train`.")
    return state


def load_problem(e: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, without torch's advice to retry with weights_only=False
    (for a file from elsewhere that is the unsafe step: it would run whatever code the file carries)."""
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        return ("it holds objects other than tensors and plain values; GradProm loads weights only and never runs "
                "code from a file, so it may be unsafe or damaged: do not load it elsewhere with weights_only=False "
                "unless you wrote it yourself")
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {first}".rstrip(": ")


def training_state(models: Models, cfg: Config, epoch: int, step: int, best: float,
                   val: dict[str, float], scaler: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict: models, optimizers, progress, config and the step's own state (the EMA of
    `gradprom.scale`); plain tensors and numbers only."""
    return {"enhancer": models.enhancer.state_dict(), "recognizer": models.recognizer.state_dict(),
            "opt_e": models.opt_e.state_dict(), "opt_r": models.opt_r.state_dict() if models.opt_r is not None else {},
            "epoch": epoch, "step": step, "best": best, "config": cfg.to_dict(), "metrics": val,
            "scaler": scaler or {}}


def load_training_state(models: Models, state: dict[str, Any], run_path: Path, ckpt: Path) -> None:
    """Load a checkpoint's models and optimizers; one that does not fit the config is a ConfigError."""
    try:
        models.enhancer.load_state_dict(state["enhancer"])
        models.recognizer.load_state_dict(state["recognizer"])
        models.opt_e.load_state_dict(state["opt_e"])
        if models.opt_r is not None and state.get("opt_r"):
            models.opt_r.load_state_dict(state["opt_r"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"--resume {str(run_path)!r}: its checkpoint {str(ckpt)!r} does not "
                          f"fit the configuration given ({state_dict_problem(e)}); a resumed run keeps "
                          f"its task, data and models, so change only settings such as --epochs.") from None
