"""How does the Runs page cope with thousands of run directories?

Builds N run directories, each a copy of one real tiny run's run.json, config.yaml and epochs.parquet (trained
here in a few seconds, or --source RUN_DIR), then measures side by side:
  server, before   one refresh as the page did it before the runs index: the whole tree's signature (depth 3),
                   every run.json and config.yaml parsed (pure-Python YAML) and every epochs.parquet read
                   (only up to --before-max runs: 20,000 took 193 s in the reliability review)
  server, after    the runs index (gradprom/dashboard/index.py): cold (first refresh), warm (nothing changed)
                   and one run rewritten (its row rebuilt, every other row from the cache)
  browser          `gradprom dashboard` started as a subprocess (default --interval 2), Debian's Chromium
                   (Playwright) opening the Runs page until the table shows its first row: the first visit
                   (the server's first refresh included) and warm visits (the index already built)
Medians over --repeats.

Usage: python benchmarks/dashboard_scale.py [--runs 1000 20000] [--repeats 3] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from gradprom.dashboard import discover
from gradprom.dashboard.index import RunIndex
from gradprom.dashboard.rows import run_row

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run"]
COPIED = ("config.yaml", "epochs.parquet")


def tiny_run(work: Path) -> Path:
    """One real run of the engine: 2 epochs of 2 steps on 32x32 phantoms."""
    from gradprom.platform.config import build_config
    from gradprom.platform.loop import train

    cfg = build_config({"data": {"num_train": 64, "num_val": 16, "num_test": 16, "image_size": 32},
                        "model": {"enhancer_channels": [8, 16]}, "optim": {"epochs": 2, "max_steps_per_epoch": 2},
                        "run": {"device": "cpu", "num_threads": 1, "out": str(work), "name": "source"}},
                       source="benchmark")
    return train(cfg, progress=False)


def build(root: Path, source: Path, n: int) -> None:
    """N copies of the source run (its own name and start time each), written once per size."""
    info = json.loads((source / "run.json").read_text())
    blobs = {name: (source / name).read_bytes() for name in COPIED}
    root.mkdir(parents=True)
    for i in range(n):
        d = root / f"r{i:05d}"
        d.mkdir()
        (d / "run.json").write_text(json.dumps({**info, "name": d.name, "start": f"2026-01-01T{i // 3600 % 24:02d}:"
                                                f"{i // 60 % 60:02d}:{i % 60:02d}+00:00"}))
        for name, data in blobs.items():
            (d / name).write_bytes(data)


def before_refresh(root: Path) -> float:
    """The page's refresh before the index: signature of the tree, then every run parsed with pure-Python YAML."""
    saved = discover.YAML_LOADER
    discover.YAML_LOADER = yaml.SafeLoader
    try:
        t0 = time.perf_counter()
        discover.signature(root, depth=3)
        for run in discover.find_runs(root):
            run_row(run)
        return time.perf_counter() - t0
    finally:
        discover.YAML_LOADER = saved


def rewrite(path: Path) -> None:
    """Rewrite a file the way the engine does (temp + rename), so its mtime and its directory's change."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


def measure_server(root: Path, n: int, repeats: int, before_max: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    out["before"] = statistics.median(before_refresh(root) for _ in range(repeats)) if n <= before_max else None
    index = RunIndex(root.resolve(), run_row)
    t0 = time.perf_counter()
    snap = index.refresh()
    out["cold"] = time.perf_counter() - t0
    assert len(snap.rows) == n, (len(snap.rows), n)
    built = index.rows_built
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        again = index.refresh()
        warm.append(time.perf_counter() - t0)
        assert again.version == snap.version and index.rows_built == built  # nothing re-read
    out["warm"] = statistics.median(warm)
    one = []
    for i in range(repeats):
        rewrite(root / f"r{i:05d}" / "epochs.parquet")
        t0 = time.perf_counter()
        index.refresh()
        one.append(time.perf_counter() - t0)
    assert index.rows_built == built + repeats  # exactly the rewritten runs
    out["one_changed"] = statistics.median(one)
    return out


def measure_browser(root: Path, n: int, repeats: int, chromium: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "gradprom"
    proc = subprocess.Popen([str(exe), "dashboard", "--runs", str(root), "--port", str(port)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    shown = "() => document.querySelectorAll('#runs-table tbody td[data-dash-column=\"name\"]').length > 0"
    out: dict[str, float] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/_dash-layout", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_function(shown, timeout=600_000, polling=20)
            out["first"] = time.perf_counter() - t0
            count = page.evaluate("() => document.querySelector('#runs-table').innerText.length")
            assert count > 0
            warm = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                page.goto(url + "/")
                page.wait_for_function(shown, timeout=120_000, polling=20)
                warm.append(time.perf_counter() - t0)
            out["warm"] = statistics.median(warm)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return out


def fmt(v: float | None) -> str:
    return "      -" if v is None else f"{v:7.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before-max", type=int, default=1000, help="measure the old refresh up to this many runs")
    ap.add_argument("--source", type=Path, help="a run directory to copy (default: train a tiny one here)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradprom-scale-") as tmp:
        work = Path(tmp)
        source = args.source or tiny_run(work / "source-runs")
        results = []
        for n in args.runs:
            root = work / f"runs-{n}"
            build(root, source, n)
            server = measure_server(root, n, args.repeats, args.before_max)
            browser = {} if args.no_browser else measure_browser(root, n, args.repeats, args.chromium)
            results.append((n, server, browser))
            shutil.rmtree(root)
            print(f"{n} runs: {server} {browser}", flush=True)
    print("\nseconds (median of", args.repeats, "; '-' = not measured)")
    print(f"{'runs':>7} | {'before':>7} {'cold':>7} {'warm':>7} {'1 chgd':>7} {'before/warm':>11} | "
          f"{'page 1st':>8} {'page warm':>9}")
    for n, s, b in results:
        ratio = f"{s['before'] / s['warm']:10.0f}x" if s["before"] else "          -"
        print(f"{n:7d} | {fmt(s['before'])} {fmt(s['cold'])} {fmt(s['warm'])} {fmt(s['one_changed'])} {ratio} | "
              f"{fmt(b.get('first')):>8} {fmt(b.get('warm')):>9}")


if __name__ == "__main__":
    main()
