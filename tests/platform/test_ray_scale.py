"""Ray Train beyond one machine's memory, on a real two-node cluster: `distributed.sharding` (exact and
streaming), bounded worker memory, one worker per node, real process faults (kill -9 of a worker, a hung
worker detected within `distributed.health_timeout_s`, kill -9 of the second node's raylet with a replacement
node joining).

All Ray runs share one module cluster: `ray start --head` plus a second `ray start --address` node on this
machine (own temp dirs, 2 logical CPUs each), stopped by their own processes. The equivalence data is the
phantom store of test_ray_train.py written with tiny row groups (2-3 images), so the streamed order really
mixes row groups through the shuffle buffer.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gradprom.platform.build import train_loader
from gradprom.platform.distributed.worker_status import ALLOCATORS_THAT_RETURN_MEMORY, read_statuses
from gradprom.platform.rundir import RunDir

from .._ray_cluster import RayCluster
from .test_ray_train import (
    WEIGHT_ATOL,
    assert_recovered_run_equals,
    enhancer_diff,
    make_cfg,
    steps_of,
    write_phantom_store,
)

EPOCHS = 2
BUFFER = 4  # shuffle buffer of the equivalence runs (images)
# the memory test's store: 2000 RGB images of 32^2, 23.4 MiB as float32 (3 channels: more bytes per pixel the
# models compute on, so a store several times the cap streams through in few steps), trained for 2 epochs
BIG_IMAGES, BIG_SIDE, BIG_BATCH = 2000, 32, 64
RSS_CAP_FRACTION = 1 / 3.2  # per-worker cap on the data-memory growth, as a share of the decoded store
HEALTH_TIMEOUT_S = 6.0


def small_row_groups(monkeypatch_ctx, row_group_bytes: int) -> None:
    import gradprom.platform.store.write as write

    monkeypatch_ctx.setattr(write, "ROW_GROUP_BYTES", row_group_bytes)


def stream_cfg(store, out, name: str, workers: int, **distributed):
    cfg = make_cfg(store, out, name, workers, epochs=EPOCHS, **distributed)
    cfg.data.streaming, cfg.data.shuffle_buffer = "on", BUFFER
    return cfg


# ---------------------------------------------------------------------------------------------------------
# without Ray: the exact slices are the local streamed loader's batches
def test_exact_stream_slices_make_the_local_streamed_batches(tmp_path):
    from gradprom.platform.data.degradations import parse_degradation
    from gradprom.platform.distributed.shards import exact_steps, exact_stream_batches, streamed_train_set

    with pytest.MonkeyPatch.context() as mp:
        small_row_groups(mp, 12 << 10)
        store = write_phantom_store(tmp_path)
    cfg = stream_cfg(store, tmp_path, "x", 2)
    ds = streamed_train_set(cfg, parse_degradation(cfg.data.degradation))
    assert len(ds.groups) >= 4, "the store should have several row groups"
    cpu = torch.device("cpu")
    for epoch in (0, 1):
        local = list(train_loader(ds, cfg, epoch))
        assert exact_steps(ds, cfg) == len(local) == math.ceil(13 / 8)
        for world in (1, 2, 3):
            pieces = [list(exact_stream_batches(ds, cfg, epoch, r, world, SimpleNamespace(weight=1.0), cpu))
                      for r in range(world)]
            for k, batch in enumerate(local):
                for j, key in enumerate(("x_lq", "x_hq", "y")):
                    joined = torch.cat([pieces[r][k][j] for r in range(world)])
                    assert torch.equal(joined, batch[key]), (epoch, world, k, key)
    orders = [[int(i) for b in train_loader(ds, cfg, e) for i in b["index"]] for e in (0, 1)]
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(13))


# ---------------------------------------------------------------------------------------------------------
# the cluster and the runs on it
@pytest.fixture(scope="module")
def cluster():
    import ray

    # allocators that give freed memory back, so a worker's resident memory follows what it holds: the memory
    # test measures that (with Arrow's own jemalloc pool, streaming mode's rank 0 rose 8.5-13.5 MiB in its second
    # epoch: memory the pool keeps for reuse)
    c = RayCluster(num_cpus=2, env=ALLOCATORS_THAT_RETURN_MEMORY)
    try:
        second = c.add_node("node_second", num_cpus=2)
        ray.init(address=c.address, configure_logging=False, log_to_driver=False)
        c.wait_for_nodes(2)
        c.second = second
        yield c
    finally:
        ray.shutdown()
        c.stop()


@pytest.fixture(scope="module")
def scale_runs(cluster, tmp_path_factory):
    """Runs started on first use: the local streamed loop, exact on 1 and 2 workers (one per node)."""
    from gradprom.platform.distributed.runner import train_on_ray
    from gradprom.platform.loop import train

    root = tmp_path_factory.mktemp("scale")
    with pytest.MonkeyPatch.context() as mp:
        small_row_groups(mp, 12 << 10)
        store = write_phantom_store(root)
    out = root / "runs"
    cache: dict[str, Path] = {"store": store, "out": out, "root": root}

    def get(key: str) -> Path:
        if key not in cache:
            if key == "local":
                threads = torch.get_num_threads()
                try:
                    cache[key] = train(stream_cfg(store, out, key, 0), progress=False)
                finally:
                    torch.set_num_threads(threads)
            elif key == "w1":
                cache[key] = train_on_ray(stream_cfg(store, out, key, 1))
            elif key == "w2":
                cache[key] = train_on_ray(stream_cfg(store, out, key, 2, placement="STRICT_SPREAD"))
        return cache[key]
    return get


@pytest.mark.slow
def test_exact_sharding_of_a_streamed_store_is_independent_of_the_workers(scale_runs):
    local, w1, w2 = (steps_of(scale_runs(k)) for k in ("local", "w1", "w2"))
    gates = local.column("gate_open").to_pylist()
    assert len(gates) == EPOCHS * 2 and 0 < sum(gates) < len(gates), gates
    for t in (w1, w2):
        assert t.column("step").to_pylist() == list(range(1, len(gates) + 1))
        assert t.column("gate_open").to_pylist() == gates
        np.testing.assert_allclose(t.column("loss_e").to_numpy(), local.column("loss_e").to_numpy(), atol=1e-5)
    assert enhancer_diff(scale_runs("w1"), scale_runs("local")) < WEIGHT_ATOL
    assert enhancer_diff(scale_runs("w2"), scale_runs("w1")) < WEIGHT_ATOL
    info = RunDir(scale_runs("w2")).read_run()
    assert info["sharding"] == "exact" and "do not depend on the number of workers" in info["sharding_note"]


@pytest.mark.slow
def test_two_workers_are_placed_one_per_node(cluster, scale_runs):
    import ray

    statuses = read_statuses(scale_runs("w2"))
    assert sorted(statuses) == [0, 1]
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    placed = [statuses[r]["node_id"] for r in (0, 1)]
    assert len(set(placed)) == 2 and set(placed) <= set(nodes)
    assert {next(iter(k for k in nodes[n]["Resources"] if k.startswith("node_"))) for n in placed} == \
        {"node_head", "node_second"}


def write_big_store(root: Path) -> Path:
    """BIG_IMAGES random float32 RGB images with labels in row groups of ~1 MiB, plus tiny val/test splits."""
    import gradprom.platform.store.write as write
    from gradprom.platform.store.convert import convert

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", BIG_IMAGES), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.random((n, BIG_SIDE, BIG_SIDE, 3), dtype=np.float32)
        arrays[f"{split}_labels"] = rng.integers(0, 3, n)
    np.savez(root / "big.npz", **arrays)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(write, "ROW_GROUP_BYTES", 1 << 20)
        convert(root / "big.npz", root / "big", site="big", progress=False)
    (root / "big.npz").unlink()
    return root / "big"


@pytest.mark.slow
def test_a_store_over_three_times_the_worker_cap_trains_under_it_exact_and_streams_whole_in_streaming(
        cluster, scale_runs):
    """In both modes the whole store passes through the workers (exact: every global batch; streaming: equal
    splits) and the second pass over it stays within the cap of the first pass's peak on each worker."""
    from gradprom.platform.distributed.runner import train_on_ray
    from gradprom.platform.store.format import Store

    root = scale_runs("root")
    store = write_big_store(root)
    store_mb = Store(store).decoded_bytes("train") / 2**20
    cap_mb = store_mb * RSS_CAP_FRACTION
    assert store_mb > 3 * cap_mb
    for mode in ("exact", "streaming"):
        cfg = make_cfg(store, root / "runs", f"big-{mode}", 2, epochs=2, sharding=mode, sync_check="epoch")
        cfg.task, cfg.model.recognizer, cfg.model.recognizer_norm = "classification", "resnet", "instance"
        cfg.data.streaming, cfg.data.shuffle_buffer, cfg.data.batch_size = "on", 64, BIG_BATCH
        t0 = time.monotonic()
        path = train_on_ray(cfg)
        steps = steps_of(path).num_rows
        # every image was read: the whole split went through each mode
        assert steps == 2 * (math.ceil(BIG_IMAGES / BIG_BATCH) if mode == "exact" else
                             math.ceil(BIG_IMAGES // 2 / (BIG_BATCH // 2))), (mode, steps)
        statuses = read_statuses(path)
        assert sorted(statuses) == [0, 1]
        for rank, s in statuses.items():
            # the second pass over the whole store must not raise the first pass's peak by more than the cap (a
            # worker that kept what it read would add the whole store). The first epoch's own rise (~100 MiB
            # here) is torch's, gloo's and the allocator's first-step buffers and does not grow with the store.
            first, second = s["train_peaks_mb"]
            growth = second - first
            print(f"{mode} rank {rank}: data memory {s['data_start_mb']:.0f} MiB at start, {s['data_warm_mb']:.0f} "
                  f"after 3 steps, peak {first:.0f} in epoch 1, {second:.0f} in epoch 2 (+{growth:.1f}; cap "
                  f"{cap_mb:.1f}, store {store_mb:.1f}); peak RSS {s['peak_rss_mb']:.0f} MiB; "
                  f"{time.monotonic() - t0:.0f} s")
            assert growth < cap_mb, (mode, rank, s)
        assert RunDir(path).read_run()["sharding"] == mode


# ---------------------------------------------------------------------------------------------------------
# real faults
def _run_in_thread(fn, *args, **kw) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["path"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _wait_for(path: Path, thread: threading.Thread, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while not (path.is_file() and path.read_text().strip()):
        assert thread.is_alive(), "the run ended before the fault point"
        assert time.monotonic() < deadline, "the fault point was not reached"
        time.sleep(0.2)
    return int(path.read_text())


def _recovered_and_equal(thread: threading.Thread, box: dict, clean: Path) -> Path:
    """The faulted run finished, step rows 1..N once each, and equals the uninterrupted run `clean`."""
    thread.join(600)
    assert "error" not in box, box.get("error")
    path = box["path"]
    assert_recovered_run_equals(path, clean, 2 * EPOCHS)
    return path


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_epoch_restarts_from_the_checkpoint_and_matches(scale_runs):
    from gradprom.platform.distributed.runner import train_on_ray

    clean = scale_runs("w2")
    marker = scale_runs("root") / "paused"
    cfg = stream_cfg(scale_runs("store"), scale_runs("out"), "kill", 2, placement="STRICT_SPREAD", max_failures=1)
    thread, box = _run_in_thread(train_on_ray, cfg, inject_failure={
        "rank": 1, "epoch": 1, "step": 1, "marker": str(marker), "kind": "pause", "seconds": 600})
    pid = _wait_for(marker, thread)
    status = read_statuses(scale_runs("out") / "kill")[1]
    assert status["pid"] == pid and status["epoch"] == 0  # mid-epoch 1: epoch 0 done and checkpointed
    time.sleep(5)  # the controller collects reports every 2 s: let it register epoch 0's checkpoint first
    os.kill(pid, signal.SIGKILL)
    path = _recovered_and_equal(thread, box, clean)
    after = read_statuses(path)[1]
    assert after["pid"] != pid and after["start_epoch"] == 1  # a new process resumed rank 1 from epoch 0's checkpoint


@pytest.mark.slow
def test_a_hung_worker_is_detected_within_the_health_timeout_and_named(scale_runs):
    from gradprom.platform.distributed.runner import train_on_ray
    from gradprom.platform.errors import TrainingError

    marker = scale_runs("root") / "hung"
    cfg = stream_cfg(scale_runs("store"), scale_runs("out"), "hang", 2, health_timeout_s=HEALTH_TIMEOUT_S)
    thread, box = _run_in_thread(train_on_ray, cfg, inject_failure={
        "rank": 1, "epoch": 0, "step": 1, "marker": str(marker), "kind": "hang"})
    pid = _wait_for(marker, thread)
    t0 = time.monotonic()
    thread.join(300)
    waited = time.monotonic() - t0
    try:
        assert isinstance(box.get("error"), TrainingError), box
        msg = str(box["error"])
        assert f"rank 1 (pid {pid} on " in msg and "declared hung" in msg and "distributed.health_timeout_s" in msg
        # detected after the timeout, well before Ray's default of 600 s (the controller polls every 2 s)
        assert waited < HEALTH_TIMEOUT_S + 60, waited
    finally:
        try:  # the stopped process, should Ray not have ended it
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_kill_9_of_the_second_nodes_raylet_restarts_on_a_replacement_node_and_matches(cluster, scale_runs):
    """A lost node: the raylet of the second node is killed (its workers die with it); the placement group needs
    two nodes (STRICT_SPREAD), so the run waits until a replacement node joins, then resumes from the last
    checkpoint on it. Runs last in this module: it replaces `cluster.second`."""
    import ray

    from gradprom.platform.distributed.runner import train_on_ray

    clean = scale_runs("w2")
    marker = scale_runs("root") / "paused-node"
    cfg = stream_cfg(scale_runs("store"), scale_runs("out"), "node", 2, placement="STRICT_SPREAD", max_failures=1)
    thread, box = _run_in_thread(train_on_ray, cfg, inject_failure={
        "rank": 1, "epoch": 1, "step": 1, "marker": str(marker), "kind": "pause", "seconds": 600})
    _wait_for(marker, thread)
    time.sleep(5)  # the controller collects reports every 2 s: let it register epoch 0's checkpoint first
    lost = cluster.raylet_pid(cluster.second)
    lost_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("node_second"))
    os.kill(lost, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while any(n["NodeID"] == lost_node and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, "the GCS never marked the killed node dead"
        time.sleep(0.5)
    cluster.second = cluster.add_node("node_second", num_cpus=2)  # the replacement: same resources, new node
    path = _recovered_and_equal(thread, box, clean)
    nodes = {s["node_id"] for s in read_statuses(path).values()}
    assert lost_node not in nodes and len(nodes) == 2  # the resumed workers ran on the head and the new node
    assert all(s["start_epoch"] == 1 for s in read_statuses(path).values())  # from epoch 0's checkpoint
