"""Each Ray Train worker's status file, `<run>/workers/rank<R>.json`: who it is (pid, node, host) and its memory.

Written when the worker starts (before it reads any data) and after every epoch, atomically. It names the
process behind a rank (what an operator needs to inspect or stop a stuck worker, and what a hang report
quotes) and records the peak resident memory, the figure that `distributed.sharding` bounds.
"""

from __future__ import annotations

import json
import os
import resource
import socket
from pathlib import Path
from typing import Any

from gradprom.platform.atomic import atomic_write_text

WORKERS_DIR = "workers"


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MiB (Linux /proc, else getrusage's peak)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def reset_peak() -> None:
    """Start the peak-memory count afresh (Ray may hand a training worker a process that ran other tasks)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def status_path(run_path: str | Path, rank: int) -> Path:
    """Where rank `rank` of the run writes its status."""
    return Path(run_path) / WORKERS_DIR / f"rank{rank}.json"


def read_statuses(run_path: str | Path) -> dict[int, dict[str, Any]]:
    """The status files of a run's workers, by rank (the latest attempt of each)."""
    out = {}
    for p in sorted((Path(run_path) / WORKERS_DIR).glob("rank*.json")):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        out[int(d["rank"])] = d
    return out


class WorkerStatus:
    """The status file of this worker process."""

    def __init__(self, run_path: str | Path, rank: int, world: int):
        import ray

        reset_peak()
        rss, _ = memory_mb()
        self.path = status_path(run_path, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: dict[str, Any] = {"rank": rank, "world": world, "pid": os.getpid(),
                                       "node_id": ray.get_runtime_context().get_node_id(),
                                       "hostname": socket.gethostname(), "rss_start_mb": rss,
                                       "peak_rss_mb": rss, "epoch": None}
        self.write()

    def write(self, **fields: Any) -> None:
        """Record the current peak memory (and `fields`) in the status file."""
        self.fields.update(fields, peak_rss_mb=memory_mb()[1])
        atomic_write_text(self.path, json.dumps(self.fields, indent=1) + "\n")
