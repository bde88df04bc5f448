"""Images per second into training batches: the Parquet store (streamed by row groups) against the same images
from the MedMNIST .npz in memory and from PNG files, in one run (interleaved repeats, medians).

    python benchmarks/data_throughput.py [--images 4096] [--side 64] [--repeats 5] [--batch 64]

Each timed pass is one training epoch's batches from `train_loader` (shuffled, no degradation, so only reading
and batching are measured), including opening the source: np.load + scaling for the .npz, Pillow decoding per
image for the PNGs, row-group reads + decoding for the store. One torch thread (see the README's note on
small machines). The data is written to a temp dir first; the write times are printed too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gradprom.platform.build import train_loader
from gradprom.platform.config import build_config
from gradprom.platform.data.dataset import EnhancementDataset
from gradprom.platform.data.degradations import parse_degradation
from gradprom.platform.data.npz import load_npz
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.store.convert import convert


class PngDataset(Dataset):
    """Reads and decodes one PNG per item (what training from an image folder without a store does)."""

    def __init__(self, files: list[Path], labels: np.ndarray):
        self.files, self.labels, self.epoch = files, labels, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        x = torch.from_numpy(np.asarray(Image.open(self.files[i]), np.float32)[None] / np.float32(255))
        return {"x_lq": x, "x_hq": x, "y": torch.tensor(self.labels[i]), "index": i}


def make_data(root: Path, n: int, side: int) -> tuple[Path, list[Path], np.ndarray, dict[str, float]]:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    labels = (np.arange(n) % 4).astype(np.int64)
    small = {"images": imgs[:8], "labels": labels[:8]}
    npz = root / "bench.npz"
    times = {}
    t0 = time.perf_counter()
    np.savez(npz, train_images=imgs, train_labels=labels, val_images=small["images"], val_labels=small["labels"],
             test_images=small["images"], test_labels=small["labels"])
    times["npz"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    files = []
    for i in range(n):
        f = root / "png" / f"{i}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(imgs[i]).save(f)
        files.append(f)
    times["png"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    convert(npz, root / "store", site="bench", progress=False)
    times["store (convert from npz)"] = time.perf_counter() - t0
    return npz, files, labels, times


def epoch(ds, cfg) -> int:
    n = 0
    for b in train_loader(ds, cfg, 0):
        n += len(b["index"])
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    none = parse_degradation("none")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        npz, files, labels, wtimes = make_data(root, args.images, args.side)
        cfg = build_config({"data": {"source": str(root / "store"), "batch_size": args.batch, "degradation": "none",
                                     "streaming": "on"}})

        def run_store() -> int:
            ds, _, _ = build_datasets(cfg)
            return epoch(ds["train"], cfg)

        def run_npz() -> int:
            sets, _ = load_npz(npz, "classification")
            return epoch(EnhancementDataset(sets["train"], none, "classification", 0, "train"), cfg)

        def run_png() -> int:
            return epoch(PngDataset(files, labels), cfg)

        runners = {"store (streamed)": run_store, "npz (in memory)": run_npz, "png files": run_png}
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.repeats):  # interleaved, so drift hits every reader alike
            for name, fn in runners.items():
                t0 = time.perf_counter()
                n = fn()
                times[name].append(time.perf_counter() - t0)
                assert n == args.images, (name, n)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: args.images / v for k, v in med.items()}
    print(f"{args.images} images of {args.side}x{args.side} uint8, batch {args.batch}, median of {args.repeats}, "
          f"1 torch thread")
    for k in runners:
        print(f"  {k:18s} {rate[k]:10.0f} images/s   ({med[k] * 1e3:7.1f} ms per epoch)")
    print(f"  store / npz in memory: {rate['store (streamed)'] / rate['npz (in memory)']:.2f}x   "
          f"store / png files: {rate['store (streamed)'] / rate['png files']:.2f}x")
    print("  writing: " + ", ".join(f"{k} {v:.2f} s" for k, v in wtimes.items()))


if __name__ == "__main__":
    main()
