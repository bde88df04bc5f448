"""`gradprom federate` as a user sees it (issue 19): a quiet console unless -v (in-process), every Flower line in
<run>/log.txt, no deprecation banner, sites degraded by --degradation, figures/rounds.png, and a real
simulation under differential privacy with the server gate (run.json records the privacy parameters)."""

from __future__ import annotations

import math
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from gradprom.platform.rundir import RunDir

from ._fed import run_cli, tiny

FLOWER_INFO = "aggregate_train: Received"  # Flower's INFO line of every aggregation


def _federate(tmp, name: str, *flags: str, **federated):
    cfg_path = tmp / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(tmp / "runs", name, **federated)))
    rc, out = run_cli(["federate", "--config", str(cfg_path), *flags], tmp, name)
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
    assert "The `run_simulation` function is deprecated" in log  # dropped from the console only, on purpose
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


def test_verbose_brings_flowers_lines_back_and_log_txt_always_has_them(tmp_path, capfd, request):
    """In-process (the simulation above covers the quiet side end to end): Flower's own logger and console."""
    import logging

    from flwr.common.logger import log

    from gradprom.federated.runlog import federation_logging
    from gradprom.platform.logs import ConsoleFilter

    # Start from Flower's default console: its handler at INFO, writing to this test's stderr, without the CLI's
    # verbosity filter. An earlier test in this process may have left any of those changed (the handler keeps the
    # stream of the test that imported Flower; an in-process CLI run leaves its filter), and federation_logging
    # promises only to put back what it found. The finalizer puts back what this test found.
    flwr_handlers = [h for h in logging.getLogger("flwr").handlers if isinstance(h, logging.StreamHandler)
                     and not isinstance(h, logging.FileHandler)]
    found = [(h, h.stream, h.level, list(h.filters)) for h in flwr_handlers]
    for h in flwr_handlers:
        h.stream = sys.stderr
        h.setLevel(logging.INFO)
        for f in [f for f in h.filters if isinstance(f, ConsoleFilter)]:
            h.removeFilter(f)

    def put_back():
        for h, _stream, level, filters in found:
            h.stream = sys.__stderr__  # the capture stream it had is closed once its test ended
            h.setLevel(level)
            h.filters[:] = filters

    request.addfinalizer(put_back)
    for verbose in (False, True):
        with federation_logging(tmp_path / str(verbose), verbose) as path:
            log(logging.INFO, "%s %s", FLOWER_INFO, verbose)
            log(logging.WARNING, "The `run_simulation` function is deprecated and will be removed")
        err = capfd.readouterr().err
        assert (f"{FLOWER_INFO} {verbose}" in err) == verbose, err
        assert "deprecated" not in err  # the banner is dropped from the console, verbose or not
        text = path.read_text()
        assert f"{FLOWER_INFO} {verbose}" in text and "The `run_simulation` function is deprecated" in text
    log(logging.INFO, "after the run")  # the console handler is back as it was: Flower's default
    assert "after the run" in capfd.readouterr().err
