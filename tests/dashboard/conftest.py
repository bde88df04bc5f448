"""Fixtures of the dashboard tests: a runs directory made by short real runs of the engine, the dashboard
started as a real `gradprom dashboard` subprocess, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import _contract_tables, _real_layers

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
# the tiny engine config of every real run here (seconds on one CPU thread)
TINY = {"data": {"num_train": 64, "num_val": 16, "num_test": 16, "image_size": 32},
        "model": {"enhancer_channels": [8, 16]}, "optim": {"epochs": 2, "max_steps_per_epoch": 2},
        "run": {"device": "cpu", "num_threads": 1}}
LOCAL_RUNS = {"joint-global": {"gradprom": {"strategy": "joint"}},
              "gradprom-layer": {"gradprom": {"strategy": "gradprom", "granularity": "layer", "tau": 0.05}}}
FED_NAME, TUNE_NAME = "fed-contract", "tune-contract"  # tables written by _contract_tables
FED_REAL, TUNE_REAL = "fed-real", "tune-real"  # tiny real `gradprom federate` / `gradprom tune` runs


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_tiny(out: Path, name: str, extra: dict) -> Path:
    """One short real run of the engine's local loop."""
    from gradprom.platform.config import build_config
    from gradprom.platform.loop import train

    cfg = build_config(_merge(_merge(TINY, extra), {"run": {"out": str(out), "name": name}}), source="test")
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """Two real local runs (joint, and GradProm in layer granularity), a tiny real federation and a tiny real
    Tune experiment (each trial also a run directory), plus a federation and an experiment written to the
    tables contract by `_contract_tables`, for what tiny real runs do not show (failed and rejected hospitals,
    a Pareto front of several trials, an errored and an early-stopped trial)."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in LOCAL_RUNS.items():
        train_tiny(root, name, extra)
    work = tmp_path_factory.mktemp("layers")
    _real_layers.run_both(root, FED_REAL, TUNE_REAL, work)
    _contract_tables.write_federation(root / FED_NAME)
    _contract_tables.write_tune(root / TUNE_NAME)
    return root


@pytest.fixture(scope="session")
def real_run(runs_root) -> Path:
    """A finished real run to copy into directories that tests change."""
    return runs_root / "gradprom-layer"


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dashboard:
    """A `gradprom dashboard` subprocess; `stop()` ends exactly that process."""

    def __init__(self, runs: Path, *extra: str):
        self.port = free_port()
        self.runs = runs
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        exe = Path(sys.executable).parent / "gradprom"  # the installed command, as a user runs it
        cmd = [str(exe), "dashboard", "--runs", str(runs), "--port", str(self.port),
               "--interval", "1", *extra]
        self.log = runs.parent / f"dashboard-{self.port}.log"
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"dashboard did not answer within {timeout}s: {self.log.read_text()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def start_dashboard() -> Iterator[Callable[..., Dashboard]]:
    """Start dashboards on runs directories; each is stopped (by its PID) after the test."""
    started: list[Dashboard] = []

    def start(runs: Path, *extra: str) -> Dashboard:
        d = Dashboard(runs, *extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def dashboard(runs_root) -> Iterator[Dashboard]:
    """The dashboard over the shared runs directory."""
    d = Dashboard(runs_root)
    yield d
    d.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (Playwright cannot download its own browser here)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium (scripts/system-deps.sh)"
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser):
    """A fresh browser page; console errors are collected in `page.errors`."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = ctx.new_page()
    p.errors = []
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    yield p
    ctx.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a run directory (without its checkpoints, which the dashboard never reads)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst
