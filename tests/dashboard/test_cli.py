"""`gradprom dashboard` as a user meets it: --help, bad input (one paragraph, exit 2), the --host warning, and
an app that imports no training code."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gradprom.cli import main

from .conftest import REPO, Dashboard

EXE = str(Path(sys.executable).parent / "gradprom")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent)})


def test_help_names_every_option():
    out = _run("dashboard", "--help")
    assert out.returncode == 0
    for flag in ("--runs", "--port", "--host", "--ray-address", "--interval"):
        assert flag in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--runs", "no/such/dir"], "--runs 'no/such/dir': no such directory"),
    (["--runs", ".", "--port", "70000"], "--port 70000: must be between 1 and 65535"),
    (["--runs", ".", "--host", "my laptop"], "--host 'my laptop': not an IP address"),
    (["--runs", ".", "--interval", "0"], "--interval 0.0: must be between"),
])
def test_bad_input_is_one_paragraph_and_exit_2(args, message, capsys):
    # in-process through the real entry point (a subprocess per case would pay torch's import each time)
    assert main(["dashboard", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_port_in_use_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["dashboard", "--runs", str(tmp_path), "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "Address already in use" in err and "Traceback" not in err


@pytest.mark.slow
def test_non_loopback_host_prints_a_warning(tmp_path):
    d = Dashboard(tmp_path, "--host", "0.0.0.0")
    try:
        log = d.log.read_text()
        assert "warning: --host 0.0.0.0 exposes the dashboard" in log
    finally:
        d.stop()


def test_the_app_imports_no_training_code():
    code = ("import sys; from gradprom.dashboard.app import build_app; build_app('.'); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('gradprom.platform', 'ray', 'flwr'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
