"""`gradprom federate` as a user sees it (issue 19), on Flower's own simulation runtime (`flwr run` on a private
SuperLink): a quiet console unless -v, every Flower line in <run>/log.txt, no deprecation warning, sites degraded
by --degradation, figures/rounds.png, a real simulation under differential privacy with the server gate
(run.json records the privacy parameters), and no process left behind."""

from __future__ import annotations

import math
import os
import signal
import time

import pyarrow.parquet as pq
import pytest
import yaml

from gradprom.platform.rundir import RunDir

from ._fed import run_cli, start_cli, stop_group, tiny

FLOWER_INFO = "aggregate_train: Received"  # Flower's INFO line of every aggregation


def _federate(tmp, name: str, *flags: str, verbose: bool = False, **federated):
    cfg_path = tmp / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(tmp / "runs", name, **federated)))
    rc, out = run_cli([*(["-v"] if verbose else []), "federate", "--config", str(cfg_path), *flags], tmp, name)
    assert rc == 0, out[-3000:]
    return RunDir(tmp / "runs" / name), out


@pytest.mark.slow
def test_quiet_dp_federation_with_degradation_server_gate_figures_and_log(tmp_path):
    run, out = _federate(tmp_path, "dp", "--degradation", "gaussian:sigma=0.25", "--dp", "server-fixed",
                         "--dp-noise-multiplier", "0.5", "--dp-clipping-norm", "2.0", hospitals=2, rounds=2,
                         gate_level="server")
    # the console: our lines (sites table, a line per round, the summary), none of Flower's INFO, no banner
    assert FLOWER_INFO not in out and "DEPRECATED" not in out and "deprecated" not in out, out
    table = [ln for ln in out.splitlines() if "hospital-" in ln]
    assert len(out.splitlines()) - len(table) <= 30, out
    assert "round 2/2: 2 sites ok" in out
    log = (run.path / "log.txt").read_text()
    assert FLOWER_INFO in log and "central DP noise" in log and "round 2/2: 2 sites ok" in log
    assert "deprecated" not in log.lower()  # Flower's own runtime: no deprecated API on the way
    # --degradation is every site's scanner (the noise ramp is off)
    sites = pq.read_table(run.path / "sites.parquet").to_pylist()
    assert [s["degradation"] for s in sites] == ["gaussian:sigma=0.25"] * 2
    info = run.read_run()
    assert (info["status"], info["dp"], info["dp_clipping_norm"], info["dp_noise_multiplier"]) == (
        "finished", "server-fixed", 2.0, 0.5)
    assert info["dp_releases"] == 2 and math.isfinite(info["dp_epsilon"]) and info["dp_epsilon"] > 0
    rows = pq.read_table(run.path / "rounds.parquet").to_pylist()
    glob = [r for r in rows if r["site"] == "global"]
    assert [r["status"] for r in glob] == ["ok", "ok"]
    assert all(r["server_gate_open"] in (0.0, 1.0) and -1 <= r["server_cos"] <= 1 for r in glob)
    png = run.path / "figures" / "rounds.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_verbose_shows_flowers_lines_a_killed_cli_leaves_no_process_and_the_run_resumes(tmp_path):
    """`-v` shows Flower's INFO lines on the console. kill -9 of the `gradprom federate` process after round 1:
    its private SuperLink and every process that started (SuperExec, the simulation process, Ray) are gone soon
    after, and the run is "stopped"; `--resume` (default verbosity: none of Flower's INFO lines) finishes it
    and leaves no process behind either."""
    from gradprom.federated.flower_runtime import descendants

    before = set(descendants(1))
    cfg_path = tmp_path / "killed.yaml"
    # 3 rounds: after round 1's checkpoint at least two rounds remain, longer than the ServerApp takes to notice
    cfg_path.write_text(yaml.safe_dump(tiny(tmp_path / "runs", "killed", hospitals=2, rounds=3)))
    run = RunDir(tmp_path / "runs" / "killed")
    proc = start_cli(["-v", "federate", "--config", str(cfg_path)], tmp_path, "killed")
    try:
        deadline = time.monotonic() + 300
        while not run.latest_checkpoint().is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.log_path.read_text()[-3000:]
            time.sleep(0.2)
        started = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the CLI alone: what it started must follow by itself
        proc.wait(timeout=30)
        deadline = time.monotonic() + 90
        while _ours(started) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ours(started), [_cmdline(p) for p in _ours(started)]
    finally:
        stop_group(proc)
    out = proc.log_path.read_text()
    assert FLOWER_INFO in out and "Starting Flower Simulation" in out, out[-3000:]
    info = run.read_run()
    assert info["status"] == "stopped" and "--resume" in info["error"], info

    rc, out = run_cli(["federate", "--resume", str(run.path)], tmp_path, "resumed")
    assert rc == 0, out[-3000:]
    assert FLOWER_INFO not in out and "deprecated" not in out.lower(), out
    assert run.read_run()["status"] == "finished"
    assert FLOWER_INFO in (run.path / "log.txt").read_text()
    assert not _ours(set(descendants(1)) - before), [_cmdline(p) for p in _ours(set(descendants(1)) - before)]


def _ours(pids) -> list[int]:
    """Those of `pids` still alive that are Flower's or Ray's processes."""
    from gradprom.federated.flower_runtime import process_alive

    return [p for p in pids if process_alive(p) and any(k in _cmdline(p) for k in (
        "flower-superlink", "flower-superexec", "flwr-simulation", "raylet", "gcs_server", "default_worker"))]


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
