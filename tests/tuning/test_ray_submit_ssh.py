"""The `ray submit` path end to end: a one-node cluster on 127.0.0.1 reached over SSH.

The test starts Debian's sshd on a free port with host and user keys it generates (its config, keys and
authorized_keys live in the test's tmp dir), points a copy of ray_cluster.yaml at it, and runs `ray up`,
`ray submit` of the job script with a tiny search, reads the results back, then `ray down`, and stops sshd.

What the copy changes, and why:
- `auth`: the generated key; the launcher has no SSH-port field, so `ssh_proxy_command` relays to the port.
- no file_mounts / setup_commands: the project is already installed here (setup is `scripts/setup.sh`).
- `head_start_ray_commands`: the venv's `ray start --head` with free ports, a private temp dir and no
  dashboard, without the `ray stop` in front (it stops every Ray instance on the machine, other users' too).
The test's sshd runs every session through a small ForceCommand script that exports GRADPROM_PYTHON (so the
job script finds the project's interpreter, as it finds ~/gradprom/.venv on a real cluster) and turns the
`ray stop` that `ray down` sends into stopping this test's head only.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from .._ray_head import cleanup, head_args, pids_of, short_temp_dir
from ._tiny import BIN, env, free_port, write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
HOME_FILES = ("ray_bootstrap_config.yaml", "ray_bootstrap_key.pem", "job_entry.py")  # what ray up/submit copy to ~

RELAY = '''import socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while (b := sys.stdin.buffer.read1(65536)):
        s.sendall(b)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while (b := s.recv(65536)):
    sys.stdout.buffer.write(b); sys.stdout.buffer.flush()
'''


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def start_sshd(d: Path, port: int, marker: str) -> subprocess.Popen:
    """sshd on 127.0.0.1:port that accepts only the generated user key."""
    host = keygen(d / "host_key")
    keygen(d / "user_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    session = d / "session.sh"
    stop = (f"cd {REPO} && exec {sys.executable} -c "
            f"\"from tests._ray_head import stop_processes; stop_processes('{marker}')\"")
    session.write_text("#!/bin/bash\n"
                       f"export GRADPROM_PYTHON={sys.executable}\n"
                       'case "$SSH_ORIGINAL_COMMAND" in\n'
                       f'  *"ray stop"*) {stop} ;;\n'
                       "esac\n"
                       'exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"\n')
    session.chmod(0o755)
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        f"ForceCommand {session}", "LogLevel VERBOSE", ""]))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    log = (d / "sshd.log").open("w")
    p = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "Server listening" not in (d / "sshd.log").read_text():
        assert p.poll() is None and time.monotonic() < deadline, (d / "sshd.log").read_text()
        time.sleep(0.2)
    return p


def cluster_yaml(d: Path, port: int, temp: Path, gcs: int, dash: int) -> Path:
    """A copy of ray_cluster.yaml pointed at the test's sshd and its private head."""
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    (d / "relay.py").write_text(RELAY)
    cfg["cluster_name"] = f"gradprom-test-{os.getpid()}"
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(d / "user_key"),
                   "ssh_proxy_command": f"{sys.executable} {d / 'relay.py'} 127.0.0.1 {port}"}
    cfg["file_mounts"], cfg["setup_commands"] = {}, []
    # no dashboard: `ray submit` needs none (the job joins through the GCS port), and it is the slowest part to
    # start on a loaded machine
    start = [str(BIN / "ray"), "start", *head_args(temp, gcs, dash, dashboard=False)]
    cfg["head_start_ray_commands"] = [" ".join(start)]
    cfg["worker_start_ray_commands"] = []
    path = d / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(cmd: list[str], tmp: Path, name: str, timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    (tmp / f"{name}.log").write_text(out.stdout + out.stderr)
    return out


def test_ray_up_submit_down_over_ssh(tmp_path):
    home = Path.home()
    existed = {f for f in HOME_FILES if (home / f).exists()}
    temp = short_temp_dir()
    port, gcs, dash = free_port(), free_port(), free_port()
    sshd = start_sshd(tmp_path, port, str(temp))
    yml = cluster_yaml(tmp_path, port, temp, gcs, dash)
    name = yaml.safe_load(yml.read_text())["cluster_name"]
    cfg = write_config(tmp_path / "tune.yaml", num_trials=2, max_concurrent=2)
    try:
        up = run([str(BIN / "ray"), "up", "-y", "--no-config-cache", str(yml)], tmp_path, "up", 300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert pids_of(str(temp)), "ray up started no head"
        sub = run([str(BIN / "ray"), "submit", "--no-config-cache", str(yml), "gradprom/tuning/job_entry.py", "--",
                   "--config", str(cfg), "--out", str(tmp_path), "--name", "ssh", "--address", f"127.0.0.1:{gcs}"],
                  tmp_path, "submit", 600)
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        # --- the results, read back -----------------------------------------------------------------------
        exp = tmp_path / "ssh"
        info = json.loads((exp / "run.json").read_text())
        assert info["status"] == "finished" and info["address"] == f"127.0.0.1:{gcs}"
        assert len({r["trial_id"] for r in pq.read_table(exp / "trials.parquet").to_pylist()}) == 2
        assert (exp / "best" / "best.yaml").is_file()
        down = run([str(BIN / "ray"), "down", "-y", str(yml)], tmp_path, "down", 120)
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
        deadline = time.monotonic() + 30
        while pids_of(str(temp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not pids_of(str(temp)), "ray down left the head running"
    finally:
        cleanup(temp)
        sshd.terminate()
        sshd.wait(timeout=30)
        for f in set(HOME_FILES) - existed:
            (home / f).unlink(missing_ok=True)
        # the launcher's local-provider state and SSH control sockets of this cluster name
        from ray._common.utils import get_default_ray_temp_dir

        for suffix in (".state", ".lock"):
            (Path(get_default_ray_temp_dir()) / f"cluster-{name}{suffix}").unlink(missing_ok=True)
        user_hash = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        shutil.rmtree(Path("/tmp") / f"ray_ssh_{user_hash}" / hashlib.sha256(name.encode()).hexdigest()[:10],
                      ignore_errors=True)
