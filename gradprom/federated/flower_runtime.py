"""Flower's own simulation runtime for `gradprom federate`: a private SuperLink in simulation mode and `flwr run`.

This is what `flwr run` does for a local simulation in Flower 1.42 (flwr/cli/local_superlink.py), made private
to one federation: the SuperLink listens on a free port of 127.0.0.1 (not Flower's fixed local port), keeps its
state in memory, finds the app's FAB and Flower's config under a FLWR_HOME of its own (a temporary directory,
removed afterwards), and is stopped, with every process it started (SuperExec, the simulation process, its
Ray instance), when the federation ends. The app is the installed `gradprom.federated` ServerApp and ClientApp,
named by a generated pyproject.toml; the federation's resolved config travels as a YAML file in the run config.

The simulation process (`flwr-simulation`, started by the SuperLink's SuperExec) runs the ServerApp and the
Ray backend; what it prints reaches this process through `flwr run --stream`. GradProm's own lines come through;
Flower's INFO lines and the CLI's banners are shown only with `-v` (log.txt in the run directory has them).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from gradprom.platform.errors import TrainingError

log = logging.getLogger(__name__)

CONNECTION = "gradprom"
STARTUP_TIMEOUT_S = 60.0
# `flwr run` needs an app directory with a pyproject.toml; the components are the installed package's apps, so
# the FAB carries no code (the simulation process imports gradprom from this environment)
APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "gradprom-federation"
version = "1.0.0"
description = "GradProm's federated ServerApp and ClientApp (the installed gradprom package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "gradprom"
fab-include = ["pyproject.toml"]

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
config = ""
out = ""
name = ""
resume = false
console = false
parent-pid = 0
"""
# lines of `flwr run` and of Flower's console that a default-verbosity run does not show (log.txt has Flower's)
_FLOWER_INFO = re.compile(r"^(\x1b\[[0-9;]*m)?(INFO|DEBUG)\s*(\x1b\[0m)?\s*:")
_CLI_BANNERS = ("Using SuperLink:", "Successfully started run", "Successfully installed", "All logs for run ID",
                "Since flwr 1.32, default simulated SuperNodes", "Starting logstream")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process on this machine (Linux /proc; empty elsewhere)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.parent.name))
    return tree


def descendants(*pids: int) -> list[int]:
    """Every process started, directly or not, by any of `pids` (SuperExec and the simulation run in sessions of
    their own, so a process group does not reach them)."""
    tree, out, todo = _children(), [], list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc; elsewhere: it exists)."""
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def stop_tree(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the SuperLink and everything it started, then SIGKILL what is left after `grace_s`."""
    pids = [proc.pid, *descendants(proc.pid)]
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the SuperLink once it has exited
        pids += [d for d in descendants(*pids) if d not in pids]  # started while stopping
        if not any(process_alive(p) for p in pids):
            break
        time.sleep(0.2)
    _signal_all([p for p in pids if process_alive(p)], signal.SIGKILL)
    proc.wait(timeout=30)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the child SIGTERMed when the `gradprom` process that started it dies (Linux's
    PR_SET_PDEATHSIG), so a killed CLI leaves no SuperLink behind; None elsewhere. The C function is looked up
    here, before the fork, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextmanager
def simulation_superlink(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A SuperLink in simulation mode on a free 127.0.0.1 port with its own FLWR_HOME; yields (the `flwr run`
    connection name, the environment to run `flwr` with); stops it and its processes at the end."""
    home = Path(tempfile.mkdtemp(prefix="gradprom-flwr-"))
    bin_dir = str(Path(sys.executable).parent)
    port = _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**env, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
           # the SuperLink starts Flower's helpers (flower-superexec, flwr-simulation) by name
           "PATH": bin_dir + os.pathsep + env.get("PATH", "")}
    cmd = [str(Path(bin_dir) / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"]
    with open(log_path, "ab") as out:
        # a session of its own: the terminal's Ctrl-C reaches only the CLI, which stops the run between rounds
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent())
    try:
        _wait_ready(proc, port, log_path)
        yield CONNECTION, env
    finally:
        stop_tree(proc)
        shutil.rmtree(home, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrainingError(f"Flower's SuperLink exited with code {proc.returncode} before it was ready; "
                                f"see {log_path}.")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TrainingError(f"Flower's SuperLink did not answer on 127.0.0.1:{port} within {STARTUP_TIMEOUT_S:.0f} "
                        f"s; see {log_path}.")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return "'" + str(v).replace("'", "") + "'"


def config_args(values: dict[str, Any]) -> str:
    """`key=value key=value` as `flwr run --run-config/--federation-config` parse it (TOML values)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in values.items())


def flower_line_shown(line: str, verbose: bool) -> bool:
    """Whether a streamed line reaches the console at this verbosity."""
    if verbose:
        return True
    return not (_FLOWER_INFO.match(line) or any(b in line for b in _CLI_BANNERS))


APPS = ("gradprom.federated.server_app:app", "gradprom.federated.client_app:app")


def flwr_run(raw: dict[str, Any], path: Path, resume: bool, federation: dict[str, Any], env: dict[str, str],
             verbose: bool, apps: tuple[str, str] = APPS) -> int:
    """Submit the federation `raw` (its run directory `path`) with `flwr run` to a private simulation SuperLink,
    print its stream at this verbosity; returns `flwr run`'s exit code. The SuperLink's own log is kept as
    `<path>/flower-superlink.log`. `apps`: the ServerApp and ClientApp as `module:attribute` (importable in
    this environment), GradProm's by default."""
    work = Path(tempfile.mkdtemp(prefix="gradprom-app-"))
    try:
        (work / "app").mkdir()
        (work / "app" / "pyproject.toml").write_text(APP_PYPROJECT.format(serverapp=apps[0], clientapp=apps[1]))
        (work / "federation.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        path.mkdir(parents=True, exist_ok=True)
        with simulation_superlink(env, path / "flower-superlink.log") as (connection, flwr_env):
            run_config = {"config": str(work / "federation.yaml"), "out": str(path.resolve().parent), "name": path.name,
                          "resume": resume, "console": True, "parent-pid": os.getpid()}
            cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(work / "app"), connection, "--stream",
                   "--run-config", config_args(run_config), "--federation-config", config_args(federation)]
            proc = subprocess.Popen(cmd, env=flwr_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True,
                                    preexec_fn=_die_with_parent())
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if flower_line_shown(line, verbose):
                        sys.stderr.write(line)
                        sys.stderr.flush()
                return proc.wait()
            finally:
                if proc.poll() is None:  # aborted: the stream's reader is gone
                    proc.kill()
                    proc.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
