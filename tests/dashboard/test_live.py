"""Live update: rows appended to a run (a new epoch, a new step part file) and a new run directory appear on the
open pages without a reload, written the way the engine writes them (atomically, temp + rename)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from gradprom.platform.rundir import write_parquet

from ._page import trace, wait_figure, wait_rows
from .conftest import copy_run, screenshot

pytestmark = pytest.mark.slow


def test_appended_rows_show_without_reload(start_dashboard, browser, page, real_run, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    run = copy_run(real_run, root / "live")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running", "end": None}))
    d = start_dashboard(root)

    page.goto(f"{d.url}/run/live")
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    wait_rows(page, "run-epochs-table", len(epochs))
    steps = pq.read_table(run / "steps").sort_by("step").to_pylist()
    wait_figure(page, "run-gate", f"f.data.some(t => t.name === 'cos' && t.x.length === {len(steps)})")
    runs_page = page.context.new_page()
    runs_page.goto(d.url + "/")
    wait_rows(runs_page, "runs-table", 1)
    page.bring_to_front()
    loads = []
    page.on("load", lambda _: loads.append(1))  # a reload would fire this

    # the engine's next epoch: a step part file, then the epoch's train and val rows
    last = steps[-1]
    new_steps = [{**last, "step": last["step"] + i, "epoch": last["epoch"] + 1, "cos": c}
                 for i, c in ((1, 0.8125), (2, -0.4375))]
    write_parquet(run / "steps" / f"part-{new_steps[0]['step']:09d}-{new_steps[-1]['step']:09d}.parquet", new_steps)
    val = [r for r in epochs if r["split"] == "val"][-1]
    train = [r for r in epochs if r["split"] == "train"][-1]
    nxt = val["epoch"] + 1
    added = [{**train, "epoch": nxt, "step": new_steps[-1]["step"]},
             {**val, "epoch": nxt, "step": new_steps[-1]["step"], "psnr": 31.2345, "ssim": 0.8765}]
    write_parquet(run / "epochs.parquet", [r for r in epochs if r["split"] != "test"] + added)

    cells = wait_rows(page, "run-epochs-table", len(epochs) - 1 + 2)
    assert [(c["epoch"], c["split"], c["psnr"]) for c in cells[-2:]] == [(str(nxt), "train", ""),
                                                                        (str(nxt), "val", "31.2345")]
    gate = wait_figure(page, "run-gate", f"f.data.some(t => t.name === 'cos' && t.x.length === {len(steps) + 2})")
    assert trace(gate, "cos")["y"][-2:] == [0.8125, -0.4375]
    curves = wait_figure(page, "run-curves", "f.data.some(t => t.name === 'val psnr' && t.y.includes(31.2345))")
    assert trace(curves, "val psnr")["x"][-1] == nxt
    screenshot(page, "live-run")

    # a new run directory appears in the runs table
    copy_run(real_run, root / "second")
    names = sorted(r["name"] for r in wait_rows(runs_page, "runs-table", 2))
    assert names == ["live", "second"]
    # and the running run's best PSNR there follows the new epoch
    live = [r for r in wait_rows(runs_page, "runs-table", 2) if r["name"] == "live"][0]
    assert live["status"] == "running" and float(live["best_psnr"]) == 31.2345
    screenshot(runs_page, "live-runs")
    assert not loads and not page.errors
