"""What a crash can leave in a run directory, put right when the run is resumed.

- Temp files: every file is written as `.<name>.<random>.tmp` beside its target and renamed (atomic.py), so
  a process killed mid-write leaves that temp file behind, as large as a checkpoint. A resumed run is the only
  writer of its directory, so any such file there is stale and is removed.
- best.pt: end_epoch writes best.pt before latest.pt, and latest.pt records the best score so far. A death
  between the two, or during the best.pt write, therefore leaves latest.pt at the previous epoch: resuming
  replays the epoch and writes best.pt again. Runs written by older versions (latest.pt first) could end up
  with a best.pt that is missing or older than the best latest.pt claims; `repair_best` fixes that:
    * latest.pt is itself the best epoch (its score equals its recorded best): copy it to best.pt;
    * best.pt is ahead of latest.pt (the crash came between the two writes): nothing to do, the replayed
      epoch rewrites it;
    * otherwise the best epoch's weights are gone: keep the best.pt there is (or none), lower the best score
      to what best.pt really holds so the next epoch that beats it is saved, and warn.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradprom.platform.atomic import atomic_path
from gradprom.platform.rundir import RunDir

log = logging.getLogger(__name__)


def stale_temp_files(run: RunDir) -> list[Path]:
    """Temp files of interrupted atomic writes (`.<name>.*.tmp`) in the run directory and its steps/,
    checkpoints/ and figures/ folders."""
    out: list[Path] = []
    for d in (run.path, run.steps, run.checkpoints, run.figures):
        if d.is_dir():
            out += sorted(p for p in d.glob(".*.tmp") if p.is_file())
    return out


def clean_temp_files(run: RunDir) -> list[Path]:
    """Remove the stale temp files (call only while no other process writes the run); returns them."""
    removed = stale_temp_files(run)
    for p in removed:
        p.unlink(missing_ok=True)
    if removed:
        log.info("removed %d temp file(s) left by an interrupted write: %s", len(removed),
                 ", ".join(p.name for p in removed[:5]))
    return removed


def _saved_best(path: Path) -> float | None:
    """The best score best.pt records (None: missing or unreadable)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return float(state["best"])
    except Exception:  # noqa: BLE001 - a damaged best.pt counts as missing; it is rewritten or reported below
        return None


def repair_best(run: RunDir, state: dict[str, Any], score_of: Callable[[dict[str, float]], float]) -> float:
    """Make best.pt agree with latest.pt's recorded best (see the module doc); returns the best score the
    resumed run should go on with."""
    best = float(state["best"])
    if best == -math.inf:
        return best
    saved = _saved_best(run.best_checkpoint())
    if saved == best:
        return best
    if saved is not None and saved > best:  # written just before a crash that came before latest.pt: the
        return best  # replayed epoch scores the same and rewrites it
    if score_of(state.get("metrics") or {}) == best:  # latest.pt holds the best epoch: it is the best checkpoint
        with atomic_path(run.best_checkpoint()) as tmp:
            shutil.copyfile(run.latest_checkpoint(), tmp)
        log.warning("best.pt was %s; restored it from latest.pt (epoch %d, the best so far)",
                    "missing or damaged" if saved is None else f"older (score {saved:.4g}, best {best:.4g})",
                    state["epoch"] + 1)
        return best
    log.warning("best.pt %s, but latest.pt records a best score of %.4g from an earlier epoch whose weights were not "
                "saved; keeping %s, and the next epoch that scores higher replaces it",
                "is missing or damaged" if saved is None else f"holds score {saved:.4g}", best,
                "no best.pt" if saved is None else "best.pt as it is")
    return -math.inf if saved is None else saved
