"""What does a federated round cost against the same local work in one process, and how many bytes travel?

Side by side, in one run:
  one process   the 4 hospitals' local steps (task.train_site, the same function the ClientApps call) run one
                after another in this process, from the same global model
  simulation    `gradprom federate`'s Flower simulation (private Ray instance, one CPU per ClientApp): the first
                round (cold: actors start and import torch) and a later round (warm), from rounds.parquet's
                clock; plus the whole run including Ray's start
  bytes         the ArrayRecord bytes sent per round (global model to every site, its weights back, and the
                client-side evaluation round) against the model's size, for `gate_level` local and server
                (server gating also returns the two summed enhancer gradients)
  privacy       the same federation with and without secure aggregation and DP, side by side:
                `federated.secure_aggregation: secagg+` (Flower's SecAgg+) and `federated.dp` none / server-fixed /
                client-fixed at `gate_level` local, and none / secagg+ / server-fixed at `gate_level` server:
                warm round time, the bytes that cross the wire per round (every message a site receives and
                sends, its content serialised as Flower's protobuf, counted at the site),
                the messages per round, and the server gate's open rate and cos per round (--dp-noise, --dp-clip)

Usage: python benchmarks/federated_round.py [--hospitals 4] [--local-steps 8] [--image-size 64] [--rounds 3]
                                            [--dp-noise 0.1] [--dp-clip 1.0] [--skip-local]
                                            [--variants local:none,local:secagg+,server:server-fixed,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADPROM_VERBOSITY", "quiet")  # the federations' own round lines stay in their log.txt

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from gradprom.federated.config import build_federation  # noqa: E402
from gradprom.federated.partition import load_dataset, load_site  # noqa: E402
from gradprom.federated.simulation import simulate  # noqa: E402
from gradprom.federated.strategy import to_record  # noqa: E402
from gradprom.federated.task import get_arrays, new_models, train_site  # noqa: E402


def record_bytes(arrays: dict) -> int:
    """Bytes of the arrays as Flower serialises them in an ArrayRecord."""
    return sum(len(a.data) for a in to_record(arrays).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hospitals", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the simulation (round 1 is the cold one)")
    ap.add_argument("--dp-noise", type=float, default=0.1, help="federated.dp_noise_multiplier of the DP runs")
    ap.add_argument("--dp-clip", type=float, default=1.0, help="federated.dp_clipping_norm of the DP runs")
    ap.add_argument("--skip-local", action="store_true", help="only the privacy table (no one-process baseline)")
    ap.add_argument("--variants", default="local:none,local:secagg+,local:server-fixed,local:client-fixed,server:none,"
                    "server:secagg+,server:server-fixed",
                    help="gate_level:privacy pairs of the privacy table, privacy = secagg+ or a federated.dp mode "
                         "(the first is the baseline)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    raw = {"data": {"num_train": 512, "num_val": 64, "num_test": 64, "image_size": args.image_size},
           "federated": {"hospitals": args.hospitals, "local_steps": args.local_steps, "rounds": args.rounds,
                         "evaluate_sites": True}}
    cfg, fed = build_federation(raw)
    _, info = load_dataset(cfg)
    start = get_arrays(new_models(cfg, info))

    sites = [load_site(cfg, fed, k) for k in range(fed.hospitals)]
    server = build_federation({**raw, "federated": {**raw["federated"], "gate_level": "server"}})[1]
    pair = train_site(cfg, server, info, sites[0], start, 1)
    pair_bytes = record_bytes({"a": pair.sum_ge, "b": pair.sum_gr})
    if args.skip_local:
        privacy_table(raw, args)
        return

    # --- one process: the same local work, site after site --------------------------------------------------
    train_site(cfg, fed, info, sites[0], start, 1)  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    for s in sites:
        train_site(cfg, fed, info, s, start, 1)
    local = time.perf_counter() - t0

    # --- the simulation ----------------------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        sim_raw = {**raw, "run": {"out": tmp, "name": "bench"}}
        t0 = time.perf_counter()
        path = simulate(sim_raw)
        total = time.perf_counter() - t0
        rows = pq.read_table(Path(path) / "rounds.parquet").to_pylist()
    glob = {r["round"]: r["time"] for r in rows if r["site"] == "global"}
    first = glob[1]
    warm = [glob[r] - glob[r - 1] for r in range(2, args.rounds + 1)]
    warm_s = min(warm) if warm else float("nan")

    # --- bytes per round -----------------------------------------------------------------------------------
    model = record_bytes(start)
    pair = pair_bytes
    n = fed.hospitals
    per_round_local = n * model + n * model + n * model  # train down, train up, evaluate down (metrics aside)
    per_round_server = per_round_local + n * pair_bytes

    print(f"federated round: {n} hospitals x {args.local_steps} local steps, {args.image_size}x{args.image_size} "
          f"phantoms, batch {cfg.data.batch_size}, {os.cpu_count()} CPUs")
    print(f"  one process, sites one after another : {local:7.2f} s")
    print(f"  simulation, warm round               : {warm_s:7.2f} s   ratio {warm_s / local:5.2f}x "
          f"(incl. client-side and server-side evaluation)")
    print(f"  simulation, first round (server clock): {first:7.2f} s   ratio {first / local:5.2f}x (actors start)")
    print(f"  simulation, whole run incl. Ray start : {total:7.2f} s for {args.rounds} rounds")
    print(f"  model size (E + R arrays)            : {model / 1e6:7.3f} MB")
    print(f"  bytes per round, gate_level local    : {per_round_local / 1e6:7.3f} MB = {per_round_local / model:.1f}x "
          f"the model ({n} sites x (down + up + evaluate down))")
    print(f"  bytes per round, gate_level server   : {per_round_server / 1e6:7.3f} MB = "
          f"{per_round_server / model:.1f}x the model (+ sum_ge, sum_gr: {pair / 1e6:.3f} MB per site)")
    privacy_table(raw, args)


def warm_round(rows: list[dict]) -> float:
    """The fastest round after the first, from rounds.parquet's clock (the global rows)."""
    glob = {r["round"]: r["time"] for r in rows if r["site"] == "global"}
    warm = [glob[r] - glob[r - 1] for r in sorted(glob) if r - 1 in glob]
    return min(warm) if warm else float("nan")


def counted_simulation(raw: dict, tmp: str, name: str) -> tuple[Path, int, int]:
    """`simulate(raw)` with every site message counted (GRADPROM_MESSAGE_BYTES_LOG, message_bytes.py); returns
    the run, bytes and messages over the run."""
    from gradprom.federated.message_bytes import ENV

    counts = Path(tmp) / f"{name}.bytes"
    counts.touch()
    os.environ[ENV] = str(counts)  # the simulation's processes and Ray actors inherit this process's environment
    try:
        path = simulate({**raw, "run": {"out": tmp, "name": name}})
    finally:
        del os.environ[ENV]
    pairs = [tuple(map(int, line.split())) for line in counts.read_text().splitlines() if line.strip()]
    return Path(path), sum(a + b for a, b in pairs), len(pairs)


def privacy_table(raw: dict, args) -> None:
    """The federation with and without SecAgg+ and DP, local and server gating, side by side."""
    n, rounds = raw["federated"]["hospitals"], raw["federated"]["rounds"]
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    print(f"privacy: dp_noise_multiplier {args.dp_noise}, dp_clipping_norm {args.dp_clip}, {rounds} rounds "
          f"(noise std on the mean update {args.dp_noise * args.dp_clip / n:.4g}); SecAgg+ with Flower's defaults "
          f"(clipping range 8, 2**22 levels, max weight 1000)")
    print(f"  {'gate':6s} {'privacy':12s} {'warm round s':>17s} {'MB/round':>16s} {'msgs/round':>10s} "
          f"{'epsilon':>8s} {'test psnr':>9s}  server gate open / cos per round")
    base_time = base_bytes = None
    for gate, mode in variants:
        fed = {**raw["federated"], "gate_level": gate}
        if mode == "secagg+":
            fed["secure_aggregation"] = "secagg+"
        else:
            fed.update(dp=mode, dp_noise_multiplier=args.dp_noise, dp_clipping_norm=args.dp_clip)
        with tempfile.TemporaryDirectory() as tmp:
            path, total, messages = counted_simulation({**raw, "federated": fed}, tmp, f"{gate}-{mode}")
            rows = pq.read_table(path / "rounds.parquet").to_pylist()
            info = json.loads((path / "run.json").read_text())
        t = warm_round(rows)
        mb = total / rounds / 1e6
        base_time = t if base_time is None else base_time
        base_bytes = mb if base_bytes is None else base_bytes
        eps = info.get("dp_epsilon")
        glob = sorted((r for r in rows if r["site"] == "global"), key=lambda r: r["round"])
        per_round = " ".join(f"{r['server_gate_open']:.0f}/{r['server_cos']:+.3f}" for r in glob
                             if r["server_gate_open"] is not None) or "-"
        print(f"  {gate:6s} {mode:12s} {t:9.2f} ({t / base_time:4.2f}x) {mb:8.3f} ({mb / base_bytes:4.2f}x) "
              f"{messages / rounds:10.1f} {'-' if eps is None else f'{eps:8.2f}':>8s} {info['test']['psnr']:9.2f}  "
              f"{per_round}")


if __name__ == "__main__":
    main()
