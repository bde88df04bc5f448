"""A private Ray head for the tests (Tune's cluster tests, the dashboard's Ray view): free ports, its own short temp
dir, stopped by its own processes.

`ray stop` would stop every Ray instance on the machine, so the tests never call it: the head's processes are
found by the test's unique temp dir in their command lines and terminated by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_temp_dir() -> Path:
    """A fresh directory under /tmp with a short path (Ray's unix socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="gpray-", dir="/tmp"))


# the dashboard's modules get 30 s to start by default, which a loaded 2-core CI machine can exceed
SLOW_START_ENV = {"RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "180"}


def head_args(temp: Path, gcs_port: int, dashboard_port: int, num_cpus: int = 2, dashboard: bool = True) -> list[str]:
    """`ray start --head` arguments that touch no default port and no shared directory."""
    return ["--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
            f"--include-dashboard={'true' if dashboard else 'false'}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--num-cpus={num_cpus}", f"--temp-dir={temp}",
            "--disable-usage-stats"]


def pids_of(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (the test's temp dir), and all their descendants: Ray's
    agents rename themselves (`ray::DashboardAgent`), so only their parent's command line names the marker."""
    parents: dict[int, int] = {}
    marked = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (p / "stat").read_text()
        except OSError:
            continue
        parents[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker in cmd:
            marked.append(int(p.name))
    found, todo = set(marked), list(marked)
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def stop_processes(marker: str, timeout_s: float = 15.0) -> None:
    """SIGTERM the processes started under `marker` (and their descendants), then SIGKILL what is left after
    `timeout_s`. The set is taken before signalling: once a raylet exits, its agents are re-parented to init."""
    pids = set(pids_of(marker))

    def running(pid: int) -> bool:  # a zombie has exited already
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def alive() -> set[int]:
        return {pid for pid in pids | set(pids_of(marker)) if running(pid)}

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            pids.add(pid)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.3)
        if not alive():
            return


def cleanup(temp: Path) -> None:
    """Stop the head's processes and remove its temp dir."""
    stop_processes(str(temp))
    shutil.rmtree(temp, ignore_errors=True)


class RayHead:
    """`ray start --head` on 127.0.0.1 with a dashboard on free ports; `stop()` ends exactly its processes."""

    def __init__(self, num_cpus: int = 1):
        self.temp = short_temp_dir()
        self.port, self.dashboard_port = free_port(), free_port()
        cmd = [str(Path(sys.executable).parent / "ray"), "start",
               *head_args(self.temp, self.port, self.dashboard_port, num_cpus=num_cpus)]
        env = {**os.environ, **SLOW_START_ENV, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {out.stdout}\n{out.stderr}")
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        cleanup(self.temp)
