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
import threading
import time
from pathlib import Path
from typing import Any

from gradprom.platform.atomic import atomic_write_text

WORKERS_DIR = "workers"


def _status_kb() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM", "RssAnon", "RssShmem") if k in fields}


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MiB (Linux /proc, else getrusage's peak)."""
    try:
        kb = _status_kb()
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


# allocators that give freed memory back at once, so a worker's resident memory follows what it holds: glibc
# returns blocks of 64 KiB and more (by default it keeps up to tens of MiB of freed tensors), and Arrow decodes
# into glibc instead of its own jemalloc pool, which keeps freed blocks. Put them in the environment of `ray start`
# (the memory test's cluster and benchmarks/ray_train_scaling.py do) to measure a worker's memory this way.
ALLOCATORS_THAT_RETURN_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072",
                                 "ARROW_DEFAULT_MEMORY_POOL": "system"}


def data_memory_mb() -> float:
    """Anonymous resident memory in MiB: what this process's data and tensors occupy; 0 off Linux. Not counted:
    code pages of torch and Ray (in the peak RSS: the first steps touch them, they do not grow with the data)
    and pages of the node's shared Ray object store that Ray Data's blocks pass through (bounded per node)."""
    try:
        kb = _status_kb()
        return kb["RssAnon"] / 1024
    except (OSError, KeyError, ValueError):
        return 0.0


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
    """The status file of this worker process; a daemon thread samples its data memory 10 times a second."""

    def __init__(self, run_path: str | Path, rank: int, world: int, sample_s: float = 0.1):
        import ray

        reset_peak()
        rss, _ = memory_mb()
        self.path = status_path(run_path, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data_peak = data_memory_mb()
        self.fields: dict[str, Any] = {"rank": rank, "world": world, "pid": os.getpid(),
                                       "node_id": ray.get_runtime_context().get_node_id(),
                                       "hostname": socket.gethostname(), "rss_start_mb": rss,
                                       "peak_rss_mb": rss, "data_start_mb": self.data_peak,
                                       "data_peak_mb": self.data_peak, "epoch": None}
        self.write()
        threading.Thread(target=self._sample, args=(sample_s,), daemon=True, name="gradprom-memory").start()

    def _sample(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            self.data_peak = max(self.data_peak, data_memory_mb())

    def write(self, **fields: Any) -> None:
        """Record the current peak memory (and `fields`) in the status file."""
        self.data_peak = max(self.data_peak, data_memory_mb())
        try:
            shm = _status_kb().get("RssShmem", 0) / 1024
        except (OSError, ValueError):
            shm = 0.0
        self.fields.update(fields, peak_rss_mb=memory_mb()[1], data_peak_mb=self.data_peak, object_store_mapped_mb=shm)
        atomic_write_text(self.path, json.dumps(self.fields, indent=1) + "\n")
