"""Images per second of `gradprom enhance` on a store: the local path vs Ray Data (2 actors) vs onnxruntime,
in one run.

    python benchmarks/enhance_throughput.py [--images 256] [--side 64] [--run RUN_DIR]

Without --run, a small run (phantoms of SIDE px, 2 training steps: the speed does not depend on the weights)
is trained into a temp dir first. Rows:
  local        store -> new store in this process (read, sliding window, quantize, write), 1 torch thread
  ray data     the same job on Ray Data, 2 actors of 1 CPU each; counts the actors' start (import torch, load
               the model: a fixed cost of several seconds), not Ray's own start-up (printed separately)
  pytorch net  the network alone on the decoded images, one image per call, 1 thread (what `local` spends
               in the network)
  onnxruntime  the exported ONNX network alone, same images, one per call, 1 intra-op thread
Ratios are against `local`. On a machine shared with other work the figures move; compare within one run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import ray
import torch

from gradprom.cli import main as gradprom
from gradprom.inference.export import export_run
from gradprom.inference.pipeline import enhance_path
from gradprom.inference.ray_batch import enhance_store_on_ray
from gradprom.inference.runs import load_run
from gradprom.platform.data.readers.base import Sample
from gradprom.platform.store.format import Store, decode_images
from gradprom.platform.store.write import StoreWriter


def make_store(path: Path, n: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 1, side, side), dtype=np.uint8)
    with StoreWriter(path, "bench", {"source": "benchmark"}) as w:
        for i, img in enumerate(imgs):
            w.add(Sample(image=img, source=f"{i}", label=i % 3), "test")
    store = Store(path)
    return np.concatenate([decode_images(t, store.shape, "bench") for _, t in store.iter_tables(store.parts)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--run", help="a trained run (default: train a small one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="enhance-bench-"))
    run_dir = args.run
    if run_dir is None:
        run_dir = tmp / "runs" / "bench"
        gradprom(["-q", "train", "--set", f"data.image_size={args.side}", "--set", "data.num_train=16",
                  "--set", "data.num_val=8", "--set", "data.num_test=8", "--set", "data.batch_size=8",
                  "--max-steps-per-epoch", "2", "--epochs", "1", "--device", "cpu", "--out", str(tmp / "runs"),
                  "--name", "bench"])
    run = load_run(run_dir, "best", "cpu")
    images = make_store(tmp / "store", args.images, args.side)
    n = len(images)
    rows: list[tuple[str, float, str]] = []

    t0 = time.perf_counter()
    enhance_path(run, tmp / "store", tmp / "out-local", progress=False)
    rows.append(("local", n / (time.perf_counter() - t0), "store -> store, 1 thread"))

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        enhance_store_on_ray(run, tmp / "store", tmp / "out-ray", workers=2, progress=False)
        rows.append(("ray data", n / (time.perf_counter() - t0), f"store -> store, 2 actors (+ {ray_start:.1f} s "
                                                                 f"Ray start-up, not counted)"))
    finally:
        ray.shutdown()

    with torch.no_grad():
        t0 = time.perf_counter()
        for x in images:
            run.enhancer(torch.from_numpy(x)[None])
        rows.append(("pytorch net", n / (time.perf_counter() - t0), "network only, 1 image per call"))

    export_run(run, "onnx", tmp / "e.onnx")
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = onnxruntime.InferenceSession(str(tmp / "e.onnx"), opts, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    for x in images:
        sess.run(None, {"image": x[None]})
    rows.append(("onnxruntime", n / (time.perf_counter() - t0), "network only, 1 image per call"))

    base = rows[0][1]
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{n} images of {args.side}x{args.side}, run {run.name} ({run.cfg.model.enhancer} "
          f"{run.cfg.model.enhancer_channels})")
    print(f"{'path':<13}{'images/s':>10}{'vs local':>10}  what")
    for name, rate, what in rows:
        print(f"{name:<13}{rate:>10.1f}{rate / base:>9.2f}x  {what}")


if __name__ == "__main__":
    main()
