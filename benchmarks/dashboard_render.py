"""How long does the dashboard take to show a run with 100 000 steps, and what does server-side down-sampling buy?

Writes a synthetic run directory shaped exactly like the engine's (100 000 step rows in 50 part files, with
`layer_open` over 17 parameter tensors, and 50 epochs), then measures side by side:
  server   the run view's refresh (read the tables, build every figure, serialise to JSON), cold (nothing
           cached) and warm (tables cached, as when polling), with the server's down-sampling and without it
  browser  `gradprom dashboard` started as a subprocess, Debian's Chromium (Playwright) opening /run/<name>:
           navigation until the gate figure and the heat map are drawn (the target: under 2 s), against the same
           page for a 200-step run (the page's fixed cost: Dash and Plotly.js start); and, in that
           page, Plotly drawing the gate figure from the down-sampled JSON against the full 100 000-point JSON
Medians over --repeats, the variants interleaved.

Usage: python benchmarks/dashboard_render.py [--steps 100000] [--repeats 5] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import plotly.io as pio
import pyarrow as pa
import pyarrow.parquet as pq

from gradprom.dashboard import discover, downsample
from gradprom.dashboard.views import run as run_view

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def make_run(path: Path, steps: int, parts: int = 50, layers: int = 17, epochs: int = 50) -> None:
    """A finished layer-granularity run with `steps` step rows."""
    rng = np.random.default_rng(0)
    (path / "steps").mkdir(parents=True)
    per = steps // parts
    for p in range(parts):
        s = np.arange(p * per + 1, (p + 1) * per + 1)
        lo = (rng.random((len(s), layers)) < 0.6).astype(np.float64)
        t = pa.table({"step": s, "epoch": (s - 1) // (steps // epochs), "loss_e": rng.random(len(s)) * 0.1,
                      "loss_r": rng.random(len(s)), "cos": np.clip(rng.normal(0.05, 0.3, len(s)), -1, 1),
                      "gate_open": lo.mean(axis=1), "norm_ge": rng.random(len(s)), "norm_gr": rng.random(len(s)),
                      "skipped": np.zeros(len(s), bool),
                      "layer_open": pa.array(list(lo), type=pa.list_(pa.float64())),
                      "time": s * 0.01})
        pq.write_table(t, path / "steps" / f"part-{s[0]:09d}-{s[-1]:09d}.parquet")
    rows = []
    for e in range(epochs):
        step = (e + 1) * (steps // epochs)
        rows.append({"epoch": e, "split": "train", "step": step, "loss_e": 0.1 / (e + 1), "loss_r": 1.0 / (e + 1),
                     "gate_open_rate": 0.6, "mean_cos": 0.05})
        rows.append({"epoch": e, "split": "val", "step": step, "loss_e": 0.1 / (e + 1), "loss_r": 1.0 / (e + 1),
                     "psnr": 20 + e * 0.1, "ssim": 0.5 + e * 0.005, "accuracy": 0.5, "auc": 0.6,
                     "gate_open_rate": 0.6, "mean_cos": 0.05})
    pq.write_table(pa.Table.from_pylist(rows), path / "epochs.parquet")
    (path / "run.json").write_text(json.dumps({"name": path.name, "kind": "local", "status": "finished",
                                               "start": "2026-01-01T00:00:00+00:00", "task": "classification",
                                               "strategy": "gradprom", "tau": 0.0, "steps": steps}))
    (path / "config.yaml").write_text("task: classification\ngradprom: {strategy: gradprom, tau: 0.0, "
                                      "granularity: layer}\n")


def server_render(path: Path) -> tuple[float, int]:
    """Seconds to read the tables and build + serialise the run view's figures; JSON bytes."""
    t0 = time.perf_counter()
    epochs_t, _ = discover.read_table(path / "epochs.parquet")
    epochs = epochs_t.to_pylist()
    steps, _ = discover.read_steps(path)
    figs = [run_view.curves_figure(epochs), run_view.gate_figure(steps, 0.0, epochs), run_view.heatmap_figure(steps)]
    size = sum(len(pio.to_json(f)) for f in figs)
    return time.perf_counter() - t0, size


class NoDownsampling:
    """Temporarily make every down-sampling function return its input (the 'without' variant)."""

    def __enter__(self):
        self.saved = {n: getattr(downsample, n) for n in ("minmax", "mean", "rolling_mean", "matrix_mean")}
        downsample.minmax = lambda x, y, *a, **k: (x, y)
        downsample.mean = lambda x, y, *a, **k: (x, y)
        downsample.rolling_mean = lambda x, y, *a, **k: self.saved["rolling_mean"](x, y, len(y) + 1)
        downsample.matrix_mean = lambda m, *a, **k: (np.arange(m.shape[0]), m)

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(downsample, n, f)


def measure_server(path: Path, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "cold_full", "warm_full")}
    sizes = {}
    for _ in range(repeats):
        for full in (False, True):
            ctx = NoDownsampling() if full else None
            if ctx:
                ctx.__enter__()
            try:
                discover.CACHE = discover.TableCache()
                cold, sizes[full] = server_render(path)
                warm, _ = server_render(path)
            finally:
                if ctx:
                    ctx.__exit__()
            sfx = "_full" if full else ""
            out["cold" + sfx].append(cold)
            out["warm" + sfx].append(warm)
    out["bytes"] = [sizes[False]]
    out["bytes_full"] = [sizes[True]]
    return out


def measure_browser(root: Path, name: str, repeats: int, chromium: str) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "gradprom"
    proc = subprocess.Popen([str(exe), "dashboard", "--runs", str(root), "--port", str(port)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    out: dict[str, list[float]] = {"page": [], "page_small": [], "plot_down": [], "plot_full": []}
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        steps, _ = discover.read_steps(root / name)
        epochs = discover.read_table(root / name / "epochs.parquet")[0].to_pylist()
        down_json = pio.to_json(run_view.gate_figure(steps, 0.0, epochs))
        with NoDownsampling():
            full_json = pio.to_json(run_view.gate_figure(steps, 0.0, epochs))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            drawn = ("() => ['run-gate', 'run-heatmap'].every(id => { const g = document.querySelector('#' + id + "
                     "' .js-plotly-plot'); return g && g._fullData && g._fullData.length > 0 && "
                     "g._fullData.some(t => t.x && t.x.length > 10); })")
            page.goto(url + "/")  # warm the browser's cache of Dash's scripts, as a user's second visit
            page.wait_for_selector("#runs-table")
            for _ in range(repeats):
                for key, run in (("page", name), ("page_small", "small")):
                    t0 = time.perf_counter()
                    page.goto(f"{url}/run/{run}")
                    page.wait_for_function(drawn, timeout=60_000, polling=20)
                    out[key].append(time.perf_counter() - t0)
                for key, fig_json in (("plot_down", down_json), ("plot_full", full_json)):
                    out[key].append(page.evaluate(
                        """async s => { const f = JSON.parse(s); const d = document.createElement('div');
                           d.style.width = '1200px'; document.body.appendChild(d);
                           const t0 = performance.now(); await Plotly.newPlot(d, f.data, f.layout);
                           const t = performance.now() - t0; Plotly.purge(d); d.remove(); return t / 1000; }""",
                        fig_json))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_run(root / "large", args.steps)
        make_run(root / "small", 200, parts=1, epochs=2)  # the same page with little data: the page's fixed cost
        print(f"run with {args.steps} steps (50 part files, layer_open over 17 tensors); median of {args.repeats}")
        s = measure_server(root / "large", args.repeats)
        print(f"server, tables read + figures built + JSON: cold {med(s['cold']):.3f} s, warm {med(s['warm']):.3f} s, "
              f"{s['bytes'][0] / 1e6:.2f} MB of figure JSON")
        print(f"  without down-sampling:                   cold {med(s['cold_full']):.3f} s, warm "
              f"{med(s['warm_full']):.3f} s, {s['bytes_full'][0] / 1e6:.2f} MB "
              f"(ratio down-sampled / full, warm: {med(s['warm']) / med(s['warm_full']):.2f})")
        b = measure_browser(root, "large", args.repeats, args.chromium)
        print(f"browser, navigation to /run/large until the gate figure and heat map are drawn: {med(b['page']):.2f} s "
              f"(target < 2 s; min {min(b['page']):.2f}, max {max(b['page']):.2f})")
        print(f"  the same page for a 200-step run: {med(b['page_small']):.2f} s (ratio large / small "
              f"{med(b['page']) / med(b['page_small']):.2f}; the difference, "
              f"{med(b['page']) - med(b['page_small']):.2f} s, "
              f"is what 100 000 steps add)")
        print(f"  Plotly drawing the gate figure: down-sampled {med(b['plot_down']):.3f} s, full "
              f"{med(b['plot_full']):.3f} s (ratio {med(b['plot_down']) / med(b['plot_full']):.2f})")


if __name__ == "__main__":
    main()
