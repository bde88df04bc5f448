"""Ray Train runner: the fused all-reduce reducer, worker-count independence, agreement of all workers,
restart from a checkpoint after a failure, resume by run directory, the run directory contract, bad input.

The end-to-end runs share one private Ray instance (`address="local"`, 3 logical CPUs: 2 workers + 1 for Ray
Data's read tasks) started and shut down by a module fixture. Their data is a small two-site Parquet store of
phantoms (segmentation: the U-Net recognizer honours `recognizer_norm: instance`, so no layer keeps batch
statistics and 2 workers x B/2 compute what 1 worker x B does). 13 training images in batches of 8 make the
second batch of each epoch 5 images, split 3 + 2 across two workers, which checks the weighted average.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gradprom.platform.build import train_loader
from gradprom.platform.config import build_config
from gradprom.platform.data.phantoms import make_phantoms
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.errors import DataError
from gradprom.platform.rundir import RunDir

TAU = 0.3
EPOCHS = 3
WEIGHT_ATOL = 1e-5  # enhancer weights, 1 worker vs 2 (summation order of the all-reduce differs)
METRIC_ATOL = 1e-5  # final metrics, restarted vs uninterrupted run (CPU: in practice exactly equal)
BAD_INPUT_TIMEOUT_S = 2.0
GATE_SPACES = ("parameter", "output")  # distributed.timeout_s of the bad-input runs; each must fail well within 30 s


# ---------------------------------------------------------------------------------------------------------
# data and config
def write_phantom_store(root: Path) -> Path:
    """Sites a (8 train) and b (5 train), 4 val and 4 test each: phantoms with masks, 32 x 32."""
    from gradprom.platform.store.convert import convert

    for site, n_train, seed in (("a", 8, 1), ("b", 5, 2)):
        arrays = {}
        for split, n, off in (("train", n_train, 0), ("val", 4, 1000), ("test", 4, 2000)):
            ph = make_phantoms(n, seed, 32, 3, 0.06, off)
            arrays[f"{split}_images"] = ph.images[:, 0]
            arrays[f"{split}_labels"] = ph.labels
            arrays[f"{split}_masks"] = ph.masks.astype(np.uint8)
        np.savez(root / f"{site}.npz", **arrays)
        convert(root / f"{site}.npz", root / "store", site=site, progress=False)
    return root / "store"


def make_cfg(source, out, name: str, workers: int, epochs: int = EPOCHS, **distributed):
    return build_config({
        "task": "segmentation", "seed": 0,
        "data": {"source": str(source), "batch_size": 8, "degradation": "gaussian:sigma=0.1"},
        "model": {"enhancer_channels": [4, 8], "recognizer_channels": [4, 8], "recognizer_norm": "instance"},
        "gradprom": {"tau": TAU},
        "optim": {"epochs": epochs},
        "run": {"out": str(out), "name": name, "device": "cpu", "figures_every_epoch": False, "flush_seconds": 0.5,
                "num_threads": 1},
        "distributed": {"workers": workers, "sync_check": "step", "timeout_s": 30, "keep_checkpoints": 2,
                        **distributed},
    })


def live_parameters(E: torch.nn.Module) -> list[str]:
    """Names of E's parameters that change its output. A conv bias right before an instance norm does not
    (the norm subtracts it), so its true gradient is 0 and Adam turns float noise (~1e-9) into steps of up to
    lr; such parameters can differ between runs without changing the model, and are not compared."""
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = E(x)
        live = []
        for name, p in E.named_parameters():
            p += 1.0
            if float((E(x) - ref).abs().max()) > 1e-4:
                live.append(name)
            p -= 1.0
    return live


def max_live_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], live: list[str]) -> float:
    return max(float((a[n].float() - b[n].float()).abs().max()) for n in live)


def steps_of(path: Path) -> pa.Table:
    return RunDir(path).read_steps()


def enhancer_of(path: Path, which: str = "latest") -> dict[str, torch.Tensor]:
    return torch.load(Path(path) / "checkpoints" / f"{which}.pt", map_location="cpu", weights_only=True)["enhancer"]


def enhancer_diff(a: Path, b: Path) -> float:
    """Largest difference of the live enhancer weights of two runs' latest checkpoints."""
    from gradprom.platform.models import build_enhancer

    E = build_enhancer("unet", 1, 1, [4, 8])
    E.load_state_dict(enhancer_of(a))
    return max_live_diff(enhancer_of(a), enhancer_of(b), live_parameters(E))


# ---------------------------------------------------------------------------------------------------------
# pieces without Ray
def test_global_batches_are_the_local_loaders(tmp_path):
    from gradprom.platform.distributed.worker import global_batches

    cfg = make_cfg("phantoms", tmp_path, "x", 2).model_copy(deep=True)
    cfg.data.num_train, cfg.data.image_size = 21, 32
    ds = build_datasets(cfg)[0]["train"]
    for epoch in (0, 3):
        local = [b["index"] for b in train_loader(ds, cfg, epoch)]
        ours = global_batches(len(ds), cfg, epoch)
        assert [b.tolist() for b in ours] == [b.tolist() for b in local]


class _FakeShard:
    """What `get_dataset_shard` gives a worker: pyarrow batches, here in a scrambled block order."""

    def __init__(self, tables):
        self.tables = tables

    def iter_batches(self, **_):
        return iter(self.tables)


def test_train_split_read_back_in_split_order(tmp_path):
    from gradprom.platform.distributed.ray_data import memory_table, read_train_split, train_source

    store = write_phantom_store(tmp_path)
    for source in ("phantoms", store):
        cfg = make_cfg(source, tmp_path, "x", 2).model_copy(deep=True)
        cfg.data.num_train, cfg.data.image_size = 11, 32
        train = build_datasets(cfg)[0]["train"]
        spec, _ = train_source(cfg, train)
        if source == "phantoms":  # one in-memory table with an index column, cut into blocks
            table = memory_table(train.data, cfg.task)
            tables = [table.slice(6), table.slice(0, 3), table.slice(3, 3)]
        else:  # the part files with their paths, as read_parquet(include_paths=True) gives them
            tables = [pq.read_table(p).append_column("path", pa.array([p] * pq.read_metadata(p).num_rows))
                      for p in spec["path_start"]][::-1]
        got = read_train_split(_FakeShard(tables), spec, cfg.task)
        np.testing.assert_array_equal(got.images, train.data.images)
        np.testing.assert_array_equal(got.masks, train.data.masks)


def _reducer_worker(rank: int, world: int, port: int, out: str) -> None:
    """One process of the step-level equivalence test: its half of every batch through AllReduceReducer."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    result = {space: _run_steps(rank, world, space) for space in GATE_SPACES}
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def _run_steps(rank: int, world: int, gate_space: str, steps: int = 5):
    """Several GradProm steps of the tiny seeded models on fixed global batches of 8, split by rank."""
    from gradprom.platform.distributed.reducers import AllReduceReducer, IdentityReducer
    from gradprom.platform.step import TrainStep
    from gradprom.platform.strategies import make_strategy

    from ._models import tiny

    E, R, _, _, _ = tiny("segmentation", seed=0, batch=1, size=16, norm="instance")
    opt_e, opt_r = torch.optim.Adam(E.parameters(), 1e-2), torch.optim.Adam(R.parameters(), 1e-2)
    reducer = AllReduceReducer() if world > 1 else IdentityReducer()
    step = TrainStep(E, R, opt_e, opt_r, make_strategy("gradprom", 0.0, "global"), task="segmentation",
                     lambda_r=0.5, gate_space=gate_space, reducer=reducer)
    gates = []
    for k in range(steps):
        g = torch.Generator().manual_seed(100 + k)
        x_hq = torch.rand(8, 1, 16, 16, generator=g)
        x_lq = x_hq + 0.2 * torch.randn(x_hq.shape, generator=g)
        y = torch.randint(0, 3, (8, 16, 16), generator=g)
        mine = torch.tensor_split(torch.arange(8), world)[rank]
        res = step(x_lq[mine], x_hq[mine], y[mine])
        gates.append(res.gate_open)
    return gates, {n: p.detach().clone() for n, p in E.named_parameters()}


@pytest.mark.slow
def test_two_processes_with_half_batches_match_one_with_the_whole(tmp_path):
    """The fused all-reduce: 2 gloo processes x batch 4 against 1 process x batch 8, both gate spaces."""
    import socket

    import torch.multiprocessing as mp

    from ._models import tiny

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.pt"
    mp.start_processes(_reducer_worker, args=(2, port, str(out)), nprocs=2, start_method="spawn")
    two = torch.load(out, weights_only=True)
    live = live_parameters(tiny("segmentation", seed=0, batch=1, size=16, norm="instance")[0])
    for space in GATE_SPACES:
        gates, weights = _run_steps(0, 1, space)
        assert two[space][0] == gates and 0.0 < sum(gates) < len(gates), f"{space}: {two[space][0]} vs {gates}"
        assert len(live) > len(weights) // 2
        assert max_live_diff(two[space][1], weights, live) < WEIGHT_ATOL, space


def test_bad_store_fails_before_ray_starts(tmp_path):
    from gradprom.platform.distributed.runner import train_on_ray

    with pytest.raises(DataError, match="does not exist"):
        train_on_ray(make_cfg(tmp_path / "no-such-store", tmp_path, "x", 2))
    store = write_phantom_store(tmp_path)
    part = next((store).glob("site=a/split=train/*.parquet"))
    part.write_bytes(part.read_bytes()[:100])  # truncated part file
    with pytest.raises(DataError, match="not readable Parquet"):
        train_on_ray(make_cfg(store, tmp_path, "y", 2))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---------------------------------------------------------------------------------------------------------
# end to end on a private Ray instance
@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """Runs of one config, started on first use: local loop, 1 worker, 2 workers, 2 workers with a failure."""
    from gradprom.platform.distributed.runner import train_on_ray
    from gradprom.platform.loop import train

    root = tmp_path_factory.mktemp("ray")
    store = write_phantom_store(root)
    out = root / "runs"
    cache: dict[str, Path] = {"store": store, "out": out}

    def get(key: str) -> Path:
        if key not in cache:
            if key == "local":
                threads = torch.get_num_threads()  # the run sets 1 thread, like each Ray worker has
                try:
                    cache[key] = train(make_cfg(store, out, key, 0), progress=False)
                finally:
                    torch.set_num_threads(threads)
            elif key == "fault":
                marker = root / "failed-once"
                cache[key] = train_on_ray(make_cfg(store, out, key, 2, max_failures=1),
                                          inject_failure={"rank": 1, "epoch": 1, "step": 1, "marker": str(marker)})
                assert marker.is_file(), "the injected failure did not happen"
            else:
                cache[key] = train_on_ray(make_cfg(store, out, key, {"w1": 1, "w2": 2}[key]))
        return cache[key]
    return get


@pytest.mark.slow
def test_one_worker_repeats_the_local_loop(runs):
    local, w1 = steps_of(runs("local")), steps_of(runs("w1"))
    assert w1.column("step").to_pylist() == list(range(1, 2 * EPOCHS + 1))
    assert w1.column("gate_open").to_pylist() == local.column("gate_open").to_pylist()
    np.testing.assert_allclose(w1.column("loss_e").to_numpy(), local.column("loss_e").to_numpy(), atol=1e-6)
    assert enhancer_diff(runs("w1"), runs("local")) < WEIGHT_ATOL


@pytest.mark.slow
def test_two_workers_match_one_worker_and_agree_on_every_gate(runs):
    w1, w2 = steps_of(runs("w1")), steps_of(runs("w2"))
    gates = w2.column("gate_open").to_pylist()
    assert gates == w1.column("gate_open").to_pylist()
    assert 0 < sum(gates) < len(gates), f"the gate should both open and close here: {gates}"
    np.testing.assert_allclose(w2.column("cos").to_numpy(), w1.column("cos").to_numpy(), atol=1e-4)
    assert enhancer_diff(runs("w2"), runs("w1")) < WEIGHT_ATOL
    train_rows = [r for r in RunDir(runs("w2")).read_epochs() if r["split"] == "train"]
    assert [r["workers"] for r in train_rows] == [2] * EPOCHS
    # checked inside the workers after every step (sync_check: step): gate decisions and weight checksums
    assert [r["gate_mismatches"] for r in train_rows] == [0] * EPOCHS
    assert [r["weight_mismatches"] for r in train_rows] == [0] * EPOCHS


@pytest.mark.slow
def test_ray_run_directory_is_a_run_directory(runs):
    from gradprom.platform.evaluate import evaluate_run

    path = runs("w2")
    run = RunDir(path)
    info = run.read_run()
    assert info["kind"] == "ray-train" and info["status"] == "finished" and info["workers"] == 2
    assert info["test"]["dice"] == pytest.approx(evaluate_run(path, "latest", "test", device="cpu")["dice"], abs=1e-6)
    assert evaluate_run(path, "best", "val", device="cpu")["psnr"] > 0
    assert run.config_yaml.is_file() and (run.figures / "samples.png").is_file()
    assert {r["split"] for r in run.read_epochs()} == {"train", "val", "test"}
    for name in ("latest", "best"):
        state = torch.load(run.checkpoints / f"{name}.pt", weights_only=True)
        assert state["epoch"] <= EPOCHS - 1 and "opt_e" in state
    kept = sorted(p.name for p in (path / "ray").glob("checkpoint_epoch*"))
    assert len(kept) == 2, kept  # keep_checkpoints: the best 2 by psnr


@pytest.mark.slow
def test_failed_worker_restarts_from_the_checkpoint_and_matches(runs):
    assert_recovered_run_equals(runs("fault"), runs("w2"), 2 * EPOCHS)


def assert_recovered_run_equals(path: Path, clean: Path, steps: int) -> None:
    """A run that recovered from a fault finished with step rows 1..steps once each (replayed steps are not
    duplicated, none lost), the same gate decisions as the uninterrupted run `clean`, and its metrics and
    weights within tolerance."""
    t = steps_of(path)
    assert t.column("step").to_pylist() == list(range(1, steps + 1))
    assert t.column("gate_open").to_pylist() == steps_of(clean).column("gate_open").to_pylist()
    a, b = RunDir(path).read_run(), RunDir(clean).read_run()
    assert a["status"] == "finished"
    for k in ("psnr", "ssim", "dice"):
        assert a["test"][k] == pytest.approx(b["test"][k], abs=METRIC_ATOL)
    assert enhancer_diff(path, clean) < METRIC_ATOL


@pytest.mark.slow
def test_more_workers_than_the_cluster_places_is_a_clear_error(runs, tmp_path):
    from gradprom.platform.distributed.cluster import ClusterError
    from gradprom.platform.distributed.runner import train_on_ray

    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"offers 3 CPUs .* 4 workers need 4 CPUs"):
        train_on_ray(make_cfg(runs("store"), tmp_path, "big", 4, timeout_s=BAD_INPUT_TIMEOUT_S))
    assert time.monotonic() - t0 < BAD_INPUT_TIMEOUT_S + 10


@pytest.mark.slow
def test_cli_bad_address_and_missing_store_exit_2_quickly(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = {
        "address": (["--address", f"127.0.0.1:{closed}"], "Cannot reach the Ray cluster"),
        "store": (["--data", str(tmp_path / "missing-store")], "does not exist"),
    }
    results: dict[str, subprocess.CompletedProcess] = {}

    def call(key, extra):
        results[key] = subprocess.run(
            [sys.executable, "-m", "gradprom.cli", "train", "--workers", "2", "--out", str(tmp_path), *extra,
             "--set", f"distributed.timeout_s={BAD_INPUT_TIMEOUT_S}", "--set", "data.num_train=16",
             "--set", "data.num_val=8", "--set", "data.num_test=8", "--set", "data.image_size=32"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})

    t0 = time.monotonic()
    threads = [threading.Thread(target=call, args=(k, v[0])) for k, v in cases.items()]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert time.monotonic() - t0 < 60
    for key, (_, message) in cases.items():
        proc = results[key]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_by_run_directory_continues_from_the_last_checkpoint(runs):
    from gradprom.platform.distributed.runner import train_on_ray

    path = runs("w1")
    before = steps_of(path)
    train_on_ray(make_cfg(runs("store"), runs("out"), "w1", 1, epochs=EPOCHS + 1), resume=True, run_path=path)
    after = steps_of(path)
    assert after.column("step").to_pylist() == list(range(1, 2 * (EPOCHS + 1) + 1))
    assert after.slice(0, before.num_rows).column("loss_e").to_pylist() == before.column("loss_e").to_pylist()
    rows = RunDir(path).read_epochs()
    assert sorted(r["epoch"] for r in rows if r["split"] == "train") == list(range(EPOCHS + 1))
    assert RunDir(path).read_run()["status"] == "finished"
