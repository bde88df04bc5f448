"""A real deployment on 127.0.0.1 with TLS: the fixture makes certificates with scripts/make-fl-certs.sh, starts
`flower-superlink` and two `flower-supernode` processes (each pointed at its own hospital's .npz) once, the tests
run the app on them with `flwr run .` (FedAdam, one round; then the same with SecAgg+ and the server gate), check
the run directories, and the fixture stops exactly the processes it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from gradprom.federated.config import build_federation
from gradprom.federated.export import export_sites
from gradprom.platform.rundir import RunDir

from ._fed import TINY, private_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SETS = ("data.num_train=64; data.num_val=16; data.num_test=16; data.image_size=32; data.batch_size=8; "
        "model.enhancer_channels=[8,16]; model.recognizer_channels=[8,16]; federated.evaluate_sites=false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL, to the process group of each process this test started (its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
    for p in procs:
        p.wait(timeout=10)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Certificates, each hospital's own data file, one TLS SuperLink and two SuperNodes on 127.0.0.1, shared by
    the runs below (each a `flwr run` of its own); every process this fixture started is stopped at the end."""
    tmp_path = tmp_path_factory.mktemp("deployment")
    # --- certificates and each hospital's own data file --------------------------------------------------
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(REPO / "scripts" / "make-fl-certs.sh"), str(certs)], check=True, timeout=120,
                   capture_output=True)
    cfg, fed = build_federation({**TINY, "seed": 5, "federated": {"hospitals": 2}})
    files = export_sites(cfg, fed, tmp_path / "sites")
    n_train = [len(np.load(f)["train_images"]) for f in files]

    env = private_env(tmp_path)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the SuperLink/SuperNode start Flower's helpers by name
    link_port, node_ports = _free_port(), [_free_port(), _free_port()]
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link_port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n')
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                             start_new_session=True)
        procs.append(p)
        return p

    try:
        # --- the SuperLink and one SuperNode per hospital, TLS on 127.0.0.1 ------------------------------
        link = start("superlink", [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(link_port),
                                   "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
                                   str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
                                   "--disable-runtime-dependency-installation"])
        _wait_port(link_port, link)
        for i, port in enumerate(node_ports):
            node = start(f"supernode-{i}", [
                str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{link_port}", "--root-certificates",
                str(certs / "ca.crt"), "--host", "127.0.0.1", "--port", str(port), "--node-config",
                f'partition-id={i} num-partitions=2 data-path="{files[i]}"'])
            _wait_port(port, node)
        yield {"tmp": tmp_path, "env": env, "n_train": n_train}
    finally:
        _stop(procs)
    assert all(p.poll() is not None for p in procs)


def _flwr_run(dep: dict, name: str, run_config: str) -> tuple[RunDir, str]:
    """Submit the app with `flwr run .` to the fixture's SuperLink; wait until its run directory is final; returns
    it and the streamed output."""
    out = dep["tmp"] / "runs"
    flwr = subprocess.run([str(BIN / "flwr"), "run", ".", "test", "--stream", "--run-config",
                           f"out='{out}' name='{name}' hospitals=2 set='{SETS}' {run_config}"],
                          cwd=REPO, env=dep["env"], capture_output=True, text=True, timeout=420)
    run = RunDir(out / name)
    assert run.exists(), flwr.stdout[-3000:] + flwr.stderr[-3000:]
    deadline = time.monotonic() + 120  # the ServerApp process may still be writing when the stream ends
    while run.read_run().get("status") == "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert run.read_run()["status"] == "finished", (run.read_run(), flwr.stdout[-3000:])
    return run, flwr.stdout + flwr.stderr


def test_superlink_and_two_supernodes_run_the_app_over_tls(deployment):
    run, _ = _flwr_run(deployment, "deployed", "rounds=1 local-steps=2 strategy='fedadam'")
    info = run.read_run()
    assert (info["kind"], info["fl_strategy"], info["hospitals"]) == ("federated", "fedadam", 2)
    rows = pq.read_table(run.path / "rounds.parquet").to_pylist()
    assert [(r["round"], r["site"], r["status"]) for r in rows] == [
        (1, "hospital-0", "ok"), (1, "hospital-1", "ok"), (1, "global", "ok")]
    # each SuperNode trained on its own file (the .npz it was pointed at), not on a server-side partition
    n_train = deployment["n_train"]
    assert [r["num_examples"] for r in rows[:2]] == n_train
    assert rows[2]["num_examples"] == sum(n_train) and rows[2]["psnr"] > 0
    assert run.latest_checkpoint().is_file()


def test_the_same_deployment_runs_secagg_plus_with_the_server_gate(deployment):
    # Flower's SecAgg+ over the same TLS SuperLink and SuperNodes: four protocol messages per site and round
    run, _ = _flwr_run(deployment, "deployed-secagg", "rounds=1 local-steps=2 strategy='fedadam' gate-level='server' "
                                                   "secure-aggregation='secagg+'")
    info = run.read_run()
    assert (info["secure_aggregation"], info["gate_level"], info["fl_strategy"]) == ("secagg+", "server", "fedadam")
    rows = pq.read_table(run.path / "rounds.parquet").to_pylist()
    assert [(r["site"], r["status"]) for r in rows] == [("hospital-0", "ok"), ("hospital-1", "ok"), ("global", "ok")]
    assert [r["num_examples"] for r in rows[:2]] == deployment["n_train"]  # metrics arrive in the clear
    assert rows[2]["server_gate_open"] in (0.0, 1.0) and -1.0 <= rows[2]["server_cos"] <= 1.0
    assert rows[2]["psnr"] > 0 and run.latest_checkpoint().is_file()
    log = (run.path / "log.txt").read_text()  # the ServerApp's log: Flower's SecAgg+ workflow ran its stages
    assert log.count("Secure aggregation commencing") == 1 and log.count("Secure aggregation completed") == 1
