"""How does the GradProm step scale on Ray Train workers, and what does its fused all-reduce cost?

For 1 and 2 workers (one private local Ray instance, gloo on CPU, nccl with --gpus-per-worker), every worker
times two steps on the same global batch split by rank, interleaved round-robin, median over repeats:
  gradprom   the engine's TrainStep with AllReduceReducer: one all-reduce of [g_e, g_r, g_R, losses] per step
  ddp        an equal joint step under DistributedDataParallel: forward, (L_e + L_r).backward() (DDP's
             bucketed all-reduce overlaps the backward), two optimizer steps
and prints side by side: global samples/s of each, the GradProm/DDP step-time ratio, the share of the
GradProm step spent in its all-reduce, and the speed-up from 1 to 2 workers.

Usage: python benchmarks/ray_train_scaling.py [--batch 32] [--size 64] [--repeats 10] [--gpus-per-worker 0]

With --sharding, instead: the data path (`distributed.sharding`) on a store larger than a per-worker memory
cap. A random RGB store of --images images (--size^2) is written to a temp dir; 2 workers train --epochs on it
with the real `gradprom train` runner in three ways: `exact` with the store in memory (data.streaming off: every
worker decodes the whole split), `exact` streamed (every worker walks the seeded row-group stream, one row group +
the shuffle buffer), and `streaming` (Ray Data streaming_split). Printed side by side: samples/s of the last
epoch, and per worker the peak RSS, the rise of its anonymous memory over its start, and the rise from the first
epoch's peak to the last's (what grows with the data), against the decoded store size and the cap (store / 3.2).
  python benchmarks/ray_train_scaling.py --sharding [--images 2000] [--size 32] [--batch 64] [--epochs 2]
Each worker gets one CPU (Ray sets one torch thread), so 1 -> 2 workers on a 2-core machine also doubles
the cores in use; the speed-up there is bounded by the memory bandwidth the two cores share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def bench_worker(config: dict) -> None:
    """One Ray Train worker: time both steps on this rank's slice of the global batch."""
    import ray.train
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradprom.platform.distributed.reducers import AllReduceReducer
    from gradprom.platform.models import build_enhancer, build_recognizer
    from gradprom.platform.step import TrainStep
    from gradprom.platform.strategies import make_strategy

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config["gpus"] > 0 else torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    chans = config["channels"]

    def models():
        torch.manual_seed(0)
        E = build_enhancer("unet", 1, 1, chans).to(device)
        R = build_recognizer("resnet", "classification", 1, 3, chans, norm="instance").to(device)
        return E, R, torch.optim.Adam(E.parameters(), 1e-5), torch.optim.Adam(R.parameters(), 1e-5)

    g = torch.Generator().manual_seed(0)
    B, S = config["batch"], config["size"]
    x_hq = torch.rand(B, 1, S, S, generator=g)
    x_lq = x_hq + 0.1 * torch.randn(x_hq.shape, generator=g)
    y = torch.randint(0, 3, (B,), generator=g)
    mine = torch.tensor_split(torch.arange(B), world)[rank]
    x_lq, x_hq, y = x_lq[mine].to(device), x_hq[mine].to(device), y[mine].to(device)

    E, R, oe, orr = models()
    reducer = AllReduceReducer()
    step = TrainStep(E, R, oe, orr, make_strategy("gradprom", 0.0, "global"), reducer=reducer)
    E2, R2, oe2, or2 = models()
    E2, R2 = DDP(E2), DDP(R2)

    def ddp_step():
        x_hat = E2(x_lq)
        loss = F.l1_loss(x_hat, x_hq) + 0.1 * F.cross_entropy(R2(x_hat), y)
        loss.backward()
        oe2.step(), or2.step()
        oe2.zero_grad(set_to_none=True), or2.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"gradprom": [], "ddp": [], "allreduce": []}
    for i in range(config["warmup"] + config["repeats"]):
        dist.barrier()
        sync()
        t0, a0 = time.perf_counter(), reducer.seconds
        step(x_lq, x_hq, y)
        sync()
        t_gp, t_ar = time.perf_counter() - t0, reducer.seconds - a0
        dist.barrier()
        t0 = time.perf_counter()
        ddp_step()
        sync()
        t_ddp = time.perf_counter() - t0
        if i >= config["warmup"]:
            times["gradprom"].append(t_gp)
            times["ddp"].append(t_ddp)
            times["allreduce"].append(t_ar)
    # the slowest rank sets the pace: take each repeat's max over ranks
    per_rank = torch.tensor([times["gradprom"], times["ddp"], times["allreduce"]], dtype=torch.float64)
    dist.all_reduce(per_rank, op=dist.ReduceOp.MAX)
    if rank == 0:
        gp, dd, ar = (statistics.median(r) for r in per_rank.tolist())
        Path(config["out"]).write_text(json.dumps({"workers": world, "gradprom_s": gp, "ddp_s": dd, "allreduce_s": ar,
                                                   "params_e": sum(p.numel() for p in E.parameters()),
                                                   "params_r": sum(p.numel() for p in R.parameters())}))


def sharding_bench(args) -> None:
    """--sharding: samples/s and per-worker memory of the three data paths on one store (see the docstring)."""
    import numpy as np

    from gradprom.platform.config import build_config
    from gradprom.platform.distributed.runner import train_on_ray
    from gradprom.platform.distributed.worker_status import ALLOCATORS_THAT_RETURN_MEMORY, read_statuses
    from gradprom.platform.rundir import RunDir
    from gradprom.platform.store import write
    from gradprom.platform.store.convert import convert
    from gradprom.platform.store.format import Store

    # allocators that give freed memory back (worker_status.py), as the memory test's cluster has them; the local
    # Ray instance below starts its workers with this process's environment: set them yourself to measure others
    for key, value in ALLOCATORS_THAT_RETURN_MEMORY.items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        arrays = {}
        for split, n in (("train", args.images), ("val", 16), ("test", 16)):
            arrays[f"{split}_images"] = rng.random((n, args.size, args.size, 3), dtype=np.float32)
            arrays[f"{split}_labels"] = rng.integers(0, 3, n)
        np.savez(root / "big.npz", **arrays)
        write.ROW_GROUP_BYTES = 1 << 20  # ~1 MiB row groups: many of them, as in a large store
        convert(root / "big.npz", root / "store", site="big", progress=False)
        store_mb = Store(root / "store").decoded_bytes("train") / 2**20
        rows = []
        for label, sharding, streaming in (("exact, in memory", "exact", "off"), ("exact, streamed", "exact", "on"),
                                           ("streaming", "streaming", "on")):
            cfg = build_config({
                "task": "classification", "seed": 0,
                "data": {"source": str(root / "store"), "batch_size": args.batch, "streaming": streaming,
                         "shuffle_buffer": 64},
                "model": {"enhancer_channels": [4, 8], "recognizer_channels": [4, 8], "recognizer_norm": "instance"},
                "optim": {"epochs": args.epochs},
                "run": {"out": str(root / "runs"), "name": label.replace(", ", "-").replace(" ", "-"),
                        "device": "cpu", "figures_every_epoch": False, "num_threads": 1},
                "distributed": {"workers": 2, "sharding": sharding, "num_cpus": 3, "timeout_s": 120}})
            path = train_on_ray(cfg)
            train = [r for r in RunDir(path).read_epochs() if r["split"] == "train"]
            for rank, st in sorted(read_statuses(path).items()):
                peaks = st["train_peaks_mb"]
                rows.append((label, rank, train[-1]["samples_per_s"], st["peak_rss_mb"],
                             peaks[-1] - st["data_start_mb"], peaks[-1] - peaks[0]))
    print(f"store: {args.images} RGB images of {args.size}^2, {store_mb:.1f} MiB as float32; per-worker cap "
          f"{store_mb / 3.2:.1f} MiB (store / 3.2); 2 workers, global batch {args.batch}, {args.epochs} epochs")
    print(f"{'sharding':>17} {'rank':>4} {'samples/s':>10} {'peak RSS MiB':>13} {'data rise MiB':>14} "
          f"{'rise after epoch 1':>19}")
    for label, rank, sps, rss, rise, late in rows:
        print(f"{label:>17} {rank:>4} {sps:>10.1f} {rss:>13.0f} {rise:>14.1f} {late:>19.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="global batch (split across the workers)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", default="16,32,64", help="U-Net enhancer and ResNet recognizer channels")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--sharding", action="store_true", help="compare the data paths of distributed.sharding")
    ap.add_argument("--images", type=int, default=2000, help="--sharding: training images in the store")
    ap.add_argument("--epochs", type=int, default=2, help="--sharding: epochs of each run")
    args = ap.parse_args()
    if args.sharding:
        sharding_bench(args)
        return

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    counts = [int(w) for w in args.workers.split(",")]
    ray.init(address="local", num_cpus=max(counts) + 1, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for w in counts:
                out = Path(tmp) / f"w{w}.json"
                cfg = {"batch": args.batch, "size": args.size, "channels": [int(c) for c in args.channels.split(",")],
                       "repeats": args.repeats, "warmup": args.warmup, "gpus": args.gpus_per_worker, "out": str(out)}
                use_gpu = args.gpus_per_worker > 0
                TorchTrainer(bench_worker, train_loop_config=cfg,
                             scaling_config=ScalingConfig(num_workers=w, use_gpu=use_gpu, resources_per_worker={
                                 "CPU": 1, **({"GPU": args.gpus_per_worker} if use_gpu else {})}),
                             run_config=RunConfig(name=f"bench-w{w}", storage_path=str(Path(tmp) / "ray"))).fit()
                rows.append(json.loads(out.read_text()))
    finally:
        ray.shutdown()

    base = rows[0]
    print(f"global batch {args.batch} x {args.size}^2, U-Net {args.channels} enhancer "
          f"({base['params_e']:,} parameters), "
          f"ResNet recognizer ({base['params_r']:,}), {'GPU' if args.gpus_per_worker else 'CPU'}, "
          f"median of {args.repeats}")
    print(f"{'workers':>7} {'GradProm samples/s':>19} {'DDP samples/s':>14} {'GradProm/DDP time':>18} "
          f"{'all-reduce share':>17} {'speed-up GradProm':>18} {'speed-up DDP':>13}")
    for r in rows:
        print(f"{r['workers']:>7} {args.batch / r['gradprom_s']:>19.1f} {args.batch / r['ddp_s']:>14.1f} "
              f"{r['gradprom_s'] / r['ddp_s']:>18.2f} {100 * r['allreduce_s'] / r['gradprom_s']:>16.1f}% "
              f"{base['gradprom_s'] / r['gradprom_s']:>18.2f} {base['ddp_s'] / r['ddp_s']:>13.2f}")


if __name__ == "__main__":
    main()
