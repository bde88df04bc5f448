"""The Ray cluster a driver runs on: start a private local instance or join one (bounded in time), and wait
until it offers the workers' resources. Importing this module does not import Ray."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time

from gradprom.platform.config import Config
from gradprom.platform.errors import ConfigError, GradPromError
from gradprom.platform.logs import quiet_libraries

log = logging.getLogger(__name__)


class ClusterError(GradPromError):
    """The Ray cluster cannot be reached or cannot place the requested workers."""


def _probe(address: str, timeout_s: float) -> None:
    """Open a TCP connection to HOST:PORT (fails in at most `timeout_s`, unlike a hanging ray.init)."""
    addr = address.removeprefix("ray://")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"config field `distributed.address`: got {address!r}; expected 'auto', HOST:PORT "
                          f"(the head's GCS port, e.g. HEAD_HOST:6379) or ray://HOST:PORT, or leave it out to "
                          f"start a local Ray instance.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"Cannot reach the Ray cluster at {address!r} within {timeout_s:g} s ({e.strerror or e}). "
                           f"Check the address and that `ray start --head` runs there, or leave out --address to "
                           f"start a local Ray instance.") from None


def connect(address: str | None, num_cpus: int, timeout_s: float) -> bool:
    """Start or join Ray: no address -> a private local instance of `num_cpus` CPUs; "auto" or HOST:PORT ->
    join it, bounded by `timeout_s`. True when this call connected (so the caller shuts Ray down)."""
    # Ray's FutureWarning asks for this opt-in (accelerator env vars left alone when a task asks for no GPU); set
    # before Ray starts, so a local instance's processes inherit it
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    quiet_libraries()  # Ray installs its console handler on import
    if ray.is_initialized():  # the caller (a test, a notebook) already chose the cluster
        log.info("using the Ray instance this process is already connected to (distributed.address ignored)")
        return False
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=True)
        return True
    if address != "auto":
        _probe(address, min(timeout_s, 10.0))
    box: dict[str, BaseException | None] = {"error": None}

    def _init() -> None:
        try:
            ray.init(address=address, configure_logging=False, log_to_driver=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            box["error"] = e

    t = threading.Thread(target=_init, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise ClusterError(f"Joining the Ray cluster at {address!r} did not finish within {timeout_s:g} s "
                           f"(distributed.timeout_s); is it a Ray head of the same Ray version ({ray.__version__})?")
    if box["error"] is not None:
        e = box["error"]
        raise ClusterError(f"Cannot join the Ray cluster at {address!r}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''} Start one with `ray start --head`, or leave "
                           f"out --address to start a local Ray instance.") from None
    return True


def wait_for_resources(cfg: Config) -> None:
    """Wait up to `distributed.timeout_s` for the cluster to offer the workers' CPUs and GPUs, else fail."""
    import ray

    d = cfg.distributed
    need_cpu, need_gpu = d.workers * d.cpus_per_worker, d.workers * d.gpus_per_worker
    deadline = time.monotonic() + d.timeout_s
    while True:
        res = ray.cluster_resources()
        cpu, gpu = res.get("CPU", 0.0), res.get("GPU", 0.0)
        if cpu >= need_cpu and gpu >= need_gpu:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"The Ray cluster offers {cpu:g} CPUs and {gpu:g} GPUs, but {d.workers} workers need {need_cpu:g} CPUs "
                f"({d.cpus_per_worker:g} each) and {need_gpu:g} GPUs ({d.gpus_per_worker:g} each); waited "
                f"{d.timeout_s:g} s (distributed.timeout_s). Use fewer --workers or --gpus-per-worker, or add nodes.")
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def connect_for(cfg: Config) -> bool:
    """`connect` as a run's `distributed` section says (CPUs of a local instance: the workers' + 1 for Ray Data)."""
    d = cfg.distributed
    cpus = d.num_cpus or math.ceil(d.workers * d.cpus_per_worker) + 1
    return connect(d.address, cpus, d.timeout_s)
