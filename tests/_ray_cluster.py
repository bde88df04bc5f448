"""A private two-node Ray cluster on this machine for the tests: `ray start --head` plus `ray start --address`
nodes, each with its own short temp dir, free ports and a custom resource naming it; every node is stopped by
its own processes (see _ray_head.py), never by `ray stop`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ._ray_head import SLOW_START_ENV, cleanup, free_port, head_args, pids_of, short_temp_dir

RAY = str(Path(sys.executable).parent / "ray")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **SLOW_START_ENV, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _start(args: list[str], temp: Path, env: dict[str, str]) -> None:
    out = subprocess.run([RAY, "start", *args], capture_output=True, text=True, timeout=180, env=_env(env))
    if out.returncode != 0:
        cleanup(temp)
        raise RuntimeError(f"ray start failed: {out.stdout}\n{out.stderr}")


class RayCluster:
    """A head node and `add_node()`s joined to it; `stop()` ends exactly the processes of its nodes. `env` is
    added to the environment of every node (its raylet passes it on to the worker processes)."""

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None):
        self.env = env or {}
        self.temps: list[Path] = []
        self.port = free_port()
        temp = short_temp_dir()
        self.temps.append(temp)
        _start([*head_args(temp, self.port, free_port(), num_cpus=num_cpus, dashboard=False),
                f"--resources={json.dumps({'node_head': 1})}"], temp, self.env)
        self.address = f"127.0.0.1:{self.port}"

    def add_node(self, name: str, num_cpus: int = 2) -> Path:
        """Start a node joined to the head; returns its temp dir (the marker of its processes)."""
        temp = short_temp_dir()
        self.temps.append(temp)
        _start([f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                f"--temp-dir={temp}", f"--resources={json.dumps({name: 1})}",
                f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                "--disable-usage-stats"], temp, self.env)
        return temp

    @staticmethod
    def raylet_pid(temp: Path) -> int:
        """The raylet process of the node started under `temp`."""
        for pid in pids_of(str(temp)):
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if exe.endswith(b"/raylet"):
                return pid
        raise RuntimeError(f"no raylet found under {temp}")

    def wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> None:
        """Wait until `count` nodes are alive (the caller is connected with ray.init)."""
        import ray

        deadline = time.monotonic() + timeout_s
        while sum(n["Alive"] for n in ray.nodes()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} Ray nodes alive after {timeout_s:g} s")
            time.sleep(0.5)

    def stop(self) -> None:
        for temp in reversed(self.temps):
            cleanup(temp)
