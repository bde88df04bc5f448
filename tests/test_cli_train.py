"""End-to-end tests of `gradprom train / evaluate / demo` through the real command line (a subprocess each).

Each CLI call costs ~5 s (imports of torch and MONAI, and torch._dynamo, which the first Adam pulls in)
before it trains anything, so the module starts every run it needs up front, a few at a time in background
threads (`RunPool`), and each test waits only for the runs it reads. To save one process, run B of the
resume test is started from run A's saved config.yaml, which is also the `--config` re-run test. The runs are tiny
(32 phantoms of 32x32 px, 2 steps per epoch, 2-level networks) and use one torch thread each, so two of them share a
2-core machine well and their numbers are exactly reproducible.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEP_COLUMNS = ("step", "epoch", "loss_e", "loss_r", "cos", "gate_open", "norm_ge", "norm_gr")
STEPS_PER_EPOCH = 2  # 32 train images / batch 8 = 4 batches, capped by --max-steps-per-epoch 2
TAU = 0.3  # the first steps of these runs have cos ~0.26 and ~0.52, so the gate both opens and closes
TINY = ["--set", "data.num_train=32", "--set", "data.num_val=16", "--set", "data.num_test=16",
        "--set", "data.image_size=32", "--set", "data.batch_size=8", "--max-steps-per-epoch", str(STEPS_PER_EPOCH),
        "--set", "model.enhancer_channels=[8,16]", "--set", "model.recognizer_channels=[8,16]"]
# one torch thread per process (2 processes share 2 cores; same thread count -> identical numbers);
# no CUDA, so "auto" is the CPU everywhere and resumed runs match uninterrupted ones exactly
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
PARALLEL = max(1, min(3, os.cpu_count() or 1))
CLI_TIMEOUT_S = 300


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """Run `python -m gradprom.cli ARGS` and capture its output."""
    return subprocess.run([sys.executable, "-m", "gradprom.cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=CLI_TIMEOUT_S)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"


# ---------------------------------------------------------------------------------------------------------
# the runs this module needs, by key
@dataclass
class Run:
    proc: subprocess.CompletedProcess
    path: Path | None = None  # the run directory (train runs)


def _train(name: str, *extra: str, epochs: int = 1) -> Callable[[RunPool], Run]:
    def job(pool: RunPool) -> Run:
        return Run(pool.call("train", *TINY, "--epochs", str(epochs), *extra, "--out", pool.root, "--name", name),
                   pool.root / name)
    return job


def _resume_first(pool: RunPool) -> Run:
    """Run B, first part: A's saved config.yaml re-run into a new directory for one epoch. Everything but the
    epochs (strategy, tau, sizes, seed) comes from the file, so B can only match A if `--config` works."""
    a = pool.get("gradprom")
    assert a.proc.returncode == 0, explain(a.proc)
    out = pool.root / "rerun"
    proc = pool.call("train", "--config", a.path / "config.yaml", "--epochs", "1", "--out", out)
    made = sorted(out.iterdir()) if out.is_dir() else []
    return Run(proc, made[0] if len(made) == 1 else None)


def _resumed(pool: RunPool) -> Run:
    """Run B, second part: continue it to two epochs."""
    first = pool.get("resume-first")
    assert first.proc.returncode == 0 and first.path is not None, explain(first.proc)
    return Run(pool.call("train", "--resume", first.path, "--epochs", "2"), first.path)


def _evaluate(pool: RunPool) -> Run:
    src = pool.get("gradprom")
    assert src.proc.returncode == 0, explain(src.proc)
    return Run(pool.call("evaluate", src.path, "--checkpoint", "latest", "--json"), src.path)


def _demo(pool: RunPool) -> Run:
    return Run(pool.call("demo", "--strategies", "enhance_only,gradprom", "--epochs", "1", "--train-images", "32",
                         "--out", pool.root / "demo"), pool.root / "demo")


JOBS: dict[str, Callable[[RunPool], Run]] = {
    # the critical path and the longest first, so the pool finishes early
    # run A: two epochs in one go; also the gradprom (tau) run of the strategy table and the evaluate source
    "gradprom": _train("gradprom", "--strategy", "gradprom", "--tau", str(TAU), epochs=2),
    "demo": _demo,
    "resume-first": _resume_first,
    "resumed": _resumed,
    "evaluate": _evaluate,
    "enhance_only": _train("enhance_only", "--strategy", "enhance_only"),
    "joint": _train("joint", "--strategy", "joint"),
    "cosine_weighted": _train("cosine_weighted", "--strategy", "cosine_weighted"),
    "pcgrad": _train("pcgrad", "--strategy", "pcgrad"),
    "torchjd-UPGrad": _train("torchjd-UPGrad", "--strategy", "torchjd:UPGrad"),
    "gradprom-layer": _train("gradprom-layer", "--strategy", "gradprom", "--tau", str(TAU), "--granularity", "layer"),
    "gradprom-output": _train("gradprom-output", "--strategy", "gradprom", "--tau", str(TAU), "--gate-space", "output"),
    "seg-gradprom": _train("seg-gradprom", "--task", "segmentation", "--strategy", "gradprom", "--tau", str(TAU)),
    "seg-joint": _train("seg-joint", "--task", "segmentation", "--strategy", "joint"),
    "sr2": _train("sr2", "--degradation", "sr2", "--strategy", "gradprom"),
}


class RunPool:
    """Start CLI runs in background threads, at most PARALLEL subprocesses at a time; `get` waits for one.

    A job may `get` another (its dependency) before it takes a subprocess slot, so waiting never blocks a slot.
    """

    def __init__(self, root: Path):
        self.root = root
        self._slots = threading.Semaphore(PARALLEL)
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}
        self._threads: list[threading.Thread] = []

    def call(self, *args: str | Path) -> subprocess.CompletedProcess:
        with self._slots:
            return cli(*args)

    def start(self, key: str) -> Future:
        with self._lock:
            if key in self._futures:
                return self._futures[key]
            fut: Future = Future()
            self._futures[key] = fut

        def work() -> None:
            try:
                fut.set_result(JOBS[key](self))
            except BaseException as e:  # surfaces in the test that reads this run
                fut.set_exception(e)

        t = threading.Thread(target=work, name=f"run-{key}", daemon=True)
        self._threads.append(t)
        t.start()
        return fut

    def get(self, key: str) -> Run:
        return self.start(key).result(timeout=3 * CLI_TIMEOUT_S)

    def join(self) -> None:
        for t in list(self._threads):
            t.join(timeout=3 * CLI_TIMEOUT_S)


# tests that read runs without a `key` parameter
NEEDS = {
    "test_resume_reproduces_uninterrupted_run": ["gradprom", "resumed"],
    "test_config_file_reruns_into_new_directory": ["gradprom", "resume-first", "resumed"],
    "test_evaluate_json_matches_test_row": ["evaluate", "gradprom"],
    "test_demo_prints_table_of_strategies": ["demo"],
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> RunPool:
    """Start every run the selected tests of this module need, longest first; wait for all at the end."""
    pool = RunPool(tmp_path_factory.mktemp("cli-runs"))
    wanted: set[str] = set()
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        wanted.update(NEEDS.get(getattr(item, "originalname", item.name), []))
        key = getattr(getattr(item, "callspec", None), "params", {}).get("key")
        if key:
            wanted.add(key)
    for key in JOBS:  # JOBS is ordered longest first
        if key in wanted:
            pool.start(key)
    yield pool
    pool.join()


# ---------------------------------------------------------------------------------------------------------
# readers
def read_steps(run: Path) -> list[dict]:
    parts = sorted((run / "steps").glob("*.parquet"))
    assert parts, f"no step part files in {run / 'steps'}"
    table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
    return sorted(table.to_pylist(), key=lambda r: r["step"])


def read_epochs(run: Path) -> list[dict]:
    return pq.read_table(run / "epochs.parquet").to_pylist()


def finished_run(runs: RunPool, key: str) -> Path:
    r = runs.get(key)
    assert r.proc.returncode == 0, explain(r.proc)
    assert "Traceback" not in r.proc.stderr, explain(r.proc)
    assert r.path is not None and r.path.is_dir(), explain(r.proc)
    return r.path


# key -> (task, epochs, gate check)
STRATEGY_RUNS = {
    "enhance_only": ("classification", 1, "closed"),
    "joint": ("classification", 1, "open"),
    "cosine_weighted": ("classification", 1, "cos>0"),
    "gradprom": ("classification", 2, "cos>tau"),
    "pcgrad": ("classification", 1, "nan"),
    "torchjd-UPGrad": ("classification", 1, "nan"),
    "gradprom-layer": ("classification", 1, "layer"),
    "gradprom-output": ("classification", 1, "cos>tau"),
    "seg-gradprom": ("segmentation", 1, "cos>tau"),
    "seg-joint": ("segmentation", 1, "open"),
    "sr2": ("classification", 1, "cos>0"),  # default tau = 0
}


@pytest.mark.parametrize("key", list(STRATEGY_RUNS))
def test_train_writes_complete_run_directory(runs, key):
    task, epochs, gate = STRATEGY_RUNS[key]
    run = finished_run(runs, key)
    proc = runs.get(key).proc
    assert f"run finished: {run}" in proc.stdout

    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished", info
    assert info["error"] is None and info["end"]
    assert info["task"] == task
    n_steps = epochs * STEPS_PER_EPOCH
    assert info["steps"] == n_steps

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["task"] == task and cfg["optim"]["epochs"] == epochs
    assert cfg["run"]["name"] is None  # left out so that `--config` starts a new run

    # steps table: one row per step done, in order, with the documented columns
    steps = read_steps(run)
    assert len(steps) == n_steps
    assert [r["step"] for r in steps] == list(range(1, n_steps + 1))
    assert [r["epoch"] for r in steps] == [e for e in range(epochs) for _ in range(STEPS_PER_EPOCH)]
    for col in STEP_COLUMNS:
        assert col in steps[0], f"steps table lacks {col!r}: {sorted(steps[0])}"
    for r in steps:
        assert not r["skipped"]
        for col in ("loss_e", "loss_r", "cos", "norm_ge", "norm_gr"):
            assert math.isfinite(r[col]), (col, r)
        assert -1.0 - 1e-6 <= r["cos"] <= 1.0 + 1e-6
    assert ("layer_open" in steps[0]) == (gate == "layer")

    # the gate, per step
    for r in steps:
        if gate == "closed":
            assert r["gate_open"] == 0.0, r
        elif gate == "open":
            assert r["gate_open"] == 1.0, r
        elif gate == "cos>tau":
            assert r["gate_open"] == float(r["cos"] > TAU), r
        elif gate == "cos>0":
            assert r["gate_open"] == float(r["cos"] > 0.0), r
        elif gate == "nan":  # torchjd aggregators are not gates
            assert math.isnan(r["gate_open"]), r
        elif gate == "layer":
            layers = r["layer_open"]
            assert len(layers) > 1 and set(layers) <= {0.0, 1.0}, r
            assert len(layers) == len(steps[0]["layer_open"])
            assert r["gate_open"] == pytest.approx(sum(layers) / len(layers)), r

    # epochs table: train and val per epoch, one test row; image quality and the task metric
    rows = read_epochs(run)
    assert sorted((r["epoch"], r["split"]) for r in rows) == sorted(
        [(e, s) for e in range(epochs) for s in ("train", "val")] + [(epochs - 1, "test")])
    metric, other = ("accuracy", "dice") if task == "classification" else ("dice", "accuracy")
    for r in rows:
        if r["split"] == "train":
            assert math.isfinite(r["loss_e"]) and r["skipped_steps"] == 0
            continue
        assert 0.0 < r["psnr"] < 100.0, r
        assert 0.0 < r["ssim"] <= 1.0, r
        assert 0.0 <= r[metric] <= 1.0, r
        assert r.get(other) is None, r
    test_row = next(r for r in rows if r["split"] == "test")
    assert test_row["psnr"] == pytest.approx(info["test"]["psnr"], abs=1e-9)

    # checkpoints: both load without unpickling code
    for name in ("latest.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert {"enhancer", "recognizer", "opt_e", "epoch", "step", "config"} <= set(state), sorted(state)
        assert state["config"]["task"] == task
    latest = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["epoch"] == epochs - 1 and latest["step"] == n_steps

    for fig in ("samples.png", "curves.png"):
        assert (run / "figures" / fig).read_bytes()[:8] == PNG_SIGNATURE, fig
    assert not list(run.rglob("*.tmp")), "a temp file was left behind"


def test_resume_reproduces_uninterrupted_run(runs):
    a = finished_run(runs, "gradprom")  # --epochs 2 in one go
    b = finished_run(runs, "resumed")  # --epochs 1, then --resume --epochs 2
    info = json.loads((b / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 2 * STEPS_PER_EPOCH

    steps_a, steps_b = read_steps(a), read_steps(b)
    assert [r["step"] for r in steps_b] == list(range(1, 2 * STEPS_PER_EPOCH + 1)), "duplicated or missing steps"
    assert len(steps_a) == len(steps_b)
    for ra, rb in zip(steps_a, steps_b):
        assert ra["epoch"] == rb["epoch"]
        for col in ("loss_e", "cos"):
            assert rb[col] == pytest.approx(ra[col], abs=1e-5), (col, ra["step"])
        assert rb["gate_open"] == ra["gate_open"], ra["step"]

    def val(run: Path, epoch: int) -> dict:
        (row,) = [r for r in read_epochs(run) if r["split"] == "val" and r["epoch"] == epoch]
        return row

    for epoch in (0, 1):
        va, vb = val(a, epoch), val(b, epoch)
        for m in ("psnr", "ssim", "accuracy"):
            assert vb[m] == pytest.approx(va[m], abs=1e-5), (m, epoch)
    assert sorted((r["epoch"], r["split"]) for r in read_epochs(b)) == sorted(
        (r["epoch"], r["split"]) for r in read_epochs(a))


def test_config_file_reruns_into_new_directory(runs):
    """`gradprom train --config <A>/config.yaml --out <new>` (run B's first part) started a new run there."""
    a = finished_run(runs, "gradprom")
    first = runs.get("resume-first")
    assert first.proc.returncode == 0, explain(first.proc)
    b = finished_run(runs, "resumed")  # B's files are final only once its resumed part is done
    assert b == first.path and b.parent == runs.root / "rerun"
    assert b.name.startswith("gradprom-classification-"), b.name  # default name: the saved config has none
    assert f"run finished: {b}" in first.proc.stdout
    assert json.loads((a / "run.json").read_text())["status"] == "finished"  # the source run is untouched

    cfg_a, cfg_b = (yaml.safe_load((p / "config.yaml").read_text()) for p in (a, b))
    assert cfg_b["run"]["out"] == str(runs.root / "rerun") and cfg_a["run"]["out"] == str(runs.root)
    cfg_a["run"].pop("out"), cfg_b["run"].pop("out")
    assert cfg_b == cfg_a  # B was resumed to A's two epochs: the very same config
    assert cfg_b["gradprom"]["tau"] == TAU and cfg_b["data"]["num_train"] == 32  # (values only the file held)
    # same config and seed: the same first epoch (the rest is the resume test's business)
    for ra, rb in zip(read_steps(a)[:STEPS_PER_EPOCH], read_steps(b)[:STEPS_PER_EPOCH], strict=True):
        for col in ("loss_e", "loss_r", "cos", "gate_open"):
            assert rb[col] == pytest.approx(ra[col], abs=1e-6), (col, ra["step"])


def test_evaluate_json_matches_test_row(runs):
    run = finished_run(runs, "gradprom")
    proc = runs.get("evaluate").proc
    assert proc.returncode == 0, explain(proc)
    metrics = json.loads(proc.stdout)
    (test_row,) = [r for r in read_epochs(run) if r["split"] == "test"]
    for m in ("psnr", "ssim", "accuracy"):
        assert metrics[m] == pytest.approx(test_row[m], abs=1e-4), m


def test_demo_prints_table_of_strategies(runs):
    r = runs.get("demo")
    assert r.proc.returncode == 0, explain(r.proc)
    assert "Traceback" not in r.proc.stderr
    out = r.proc.stdout
    assert "enhance_only" in out and "gradprom" in out, out
    assert "PSNR" in out and "accuracy" in out
    (demo_root,) = list(r.path.iterdir())
    for s in ("enhance_only", "gradprom"):
        assert json.loads((demo_root / s / "run.json").read_text())["status"] == "finished"
