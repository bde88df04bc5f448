"""A private Ray head for the Ray view's test: free ports, its own short temp dir, and stopped by the PIDs of
the processes it started (found by that temp dir in their command lines): `ray stop` would stop every Ray
instance on the machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .conftest import free_port


class RayHead:
    """`ray start --head` on 127.0.0.1 with a dashboard; `stop()` ends exactly its processes."""

    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="gpdash-", dir="/tmp"))  # unix socket paths must stay short
        self.port, self.dashboard_port = free_port(), free_port()
        ports = [f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                 f"--metrics-export-port={free_port()}"]
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
               f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", *ports, "--num-cpus=1", f"--temp-dir={self.temp}",
               "--disable-usage-stats"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {out.stdout}\n{out.stderr}")
        self.address = f"127.0.0.1:{self.port}"

    def _pids(self) -> list[int]:
        marker, out = str(self.temp), []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                out.append(int(p.name))
        return out

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while self._pids() and time.monotonic() < deadline:
                time.sleep(0.3)
            if not self._pids():
                break
        shutil.rmtree(self.temp, ignore_errors=True)
