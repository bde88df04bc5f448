"""Every view in Debian's Chromium over a runs directory of real local runs (and contract federation / Tune
tables): the numbers on the page are compared with the Parquet tables, and each view is screenshotted."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from ._page import figure, rows, shown, trace, wait_figure, wait_rows
from .conftest import FED_NAME, FED_REAL, LOCAL_RUNS, TUNE_NAME, TUNE_REAL, screenshot

pytestmark = pytest.mark.slow


def _val(path) -> list[dict]:
    return [r for r in pq.read_table(path / "epochs.parquet").to_pylist() if r["split"] == "val"]


def _best_trial(exp) -> dict:
    """The experiment's best trial, as the tuner names it in run.json (single objective) or, for a Pareto
    search, the front's trial with the best PSNR; its last reported row."""
    info = json.loads((exp / "run.json").read_text())
    finals = {}
    for r in pq.read_table(exp / "trials.parquet").to_pylist():
        finals[r["trial_id"]] = r  # rows are in report order: the last one wins
    if info.get("best_trial"):
        return finals[info["best_trial"]]
    front = [r["trial_id"] for r in pq.read_table(exp / "pareto.parquet").to_pylist()]
    return max((finals[t] for t in front), key=lambda r: r["psnr"])


def test_runs_view_shows_every_run_filters_and_compares(dashboard, page, runs_root):
    # Tune trials are folded under their experiment: one row per experiment, none per trial
    expected = {*LOCAL_RUNS, FED_NAME, TUNE_NAME, FED_REAL, TUNE_REAL}
    page.goto(dashboard.url + "/")
    table = {r["name"]: r for r in wait_rows(page, "runs-table", len(expected))}
    assert set(table) == expected and table[FED_REAL]["kind"] == "federated" and table[TUNE_REAL]["kind"] == "tune"
    for name, extra in LOCAL_RUNS.items():
        val, row = _val(runs_root / name), table[name]
        assert (row["kind"], row["status"], row["strategy"]) == ("local", "finished", extra["gradprom"]["strategy"])
        assert float(row["best_psnr"]) == shown(max(r["psnr"] for r in val))
        assert float(row["best_ssim"]) == shown(max(r["ssim"] for r in val))
        assert row["task_metric"] == "accuracy"
        assert float(row["best_task"]) == shown(max(r["accuracy"] for r in val))
    assert float(table[FED_NAME]["best_psnr"]) == shown(max(r["psnr"] for r in _val(runs_root / FED_NAME)))

    # a tune row shows one trial's values throughout: the best trial's searched values beside its metrics
    for name in (TUNE_NAME, TUNE_REAL):
        best, row = _best_trial(runs_root / name), table[name]
        n_trials = len({r["trial_id"] for r in pq.read_table(runs_root / name / "trials.parquet").to_pylist()})
        assert row["trials"] == f"{n_trials} · best {best['trial_id']}"
        for col, key in (("tau", "config/tau"), ("lambda_r", "config/lambda_r"), ("best_psnr", "psnr"),
                         ("best_ssim", "ssim"), ("best_task", "accuracy")):
            if key in best:
                assert float(row[col]) == shown(best[key]), (name, col)

    # a federation row names what its sites were fed (the noise ramp), not the server's degradation
    for name in (FED_NAME, FED_REAL):
        degs = pq.read_table(runs_root / name / "sites.parquet").column("degradation").to_pylist()
        sigmas = sorted(float(d.split("=")[1]) for d in degs)
        span = f"σ {sigmas[0]:g}" if sigmas[0] == sigmas[-1] else f"σ {sigmas[0]:g}–{sigmas[-1]:g}"
        assert table[name]["data"] == f"phantoms · {len(degs)} sites, {span}", table[name]["data"]
    assert "–" in table[FED_REAL]["data"]  # the real federation's sites differ (the default ramp)

    # filter: the native DataTable filter row
    box = page.locator('#runs-table th[data-dash-column="strategy"] input[type=text]')
    box.fill("joint")
    box.press("Enter")
    assert [r["name"] for r in wait_rows(page, "runs-table", 1)] == ["joint-global"]
    box.fill("")
    box.press("Enter")
    shown_rows = wait_rows(page, "runs-table", len(expected))

    # tick the two local runs: their validation curves appear side by side
    for i, r in enumerate(shown_rows):
        if r["name"] in LOCAL_RUNS:
            page.locator("#runs-table tbody tr").nth(i + 2).locator("input[type=checkbox]").check()  # 2 header rows
    fig = wait_figure(page, "runs-compare", "f.data.length >= 6")
    for name in LOCAL_RUNS:
        t = trace(fig, name)  # the PSNR panel's trace carries the run's name
        assert [shown(y) for y in t["y"]] == [shown(r["psnr"]) for r in _val(runs_root / name)]
    screenshot(page, "runs")
    assert not page.errors


@pytest.mark.parametrize("name", list(LOCAL_RUNS))
def test_run_view_curves_gate_heatmap_samples(dashboard, page, runs_root, name):
    run = runs_root / name
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    steps = pq.read_table(run / "steps").sort_by("step").to_pylist()
    page.goto(f"{dashboard.url}/run/{name}")
    cells = wait_rows(page, "run-epochs-table", len(epochs))
    for want, got in zip(epochs, cells):
        assert (int(got["epoch"]), got["split"]) == (want["epoch"], want["split"])
        for k, v in want.items():
            if isinstance(v, float):
                assert float(got[k]) == shown(v), (k, got[k], v)
    summary = {r["field"]: r["value"] for r in rows(page, "run-summary")}
    assert summary["status"] == "finished" and summary["steps"] == str(len(steps))

    curves = wait_figure(page, "run-curves", "f.data.length > 4")
    assert [shown(y) for y in trace(curves, "val psnr")["y"]] == [shown(r["psnr"]) for r in epochs
                                                                   if r["split"] == "val"]
    gate = wait_figure(page, "run-gate", "f.data.some(t => t.name === 'cos')")
    cos = trace(gate, "cos")
    assert cos["x"] == [r["step"] for r in steps]
    assert [shown(y) for y in cos["y"]] == [shown(r["cos"]) for r in steps]
    assert [shown(y) for y in trace(gate, "‖g_r‖")["y"]] == [shown(r["norm_gr"]) for r in steps]
    tau = LOCAL_RUNS[name]["gradprom"].get("tau", 0.0)
    assert {"y0": tau, "y1": tau} in gate["shapes"] and f"τ = {tau:g}" in gate["annotations"]
    opened = trace(gate, "open")["x"] + trace(gate, "closed")["x"]
    assert sorted(opened) == [r["step"] for r in steps]

    heat_visible = page.locator("#run-heatmap-box").is_visible()
    if LOCAL_RUNS[name]["gradprom"].get("granularity") == "layer":
        assert heat_visible
        heat = wait_figure(page, "run-heatmap", "f.data.length === 1 && f.data[0].type === 'heatmap'")
        z = heat["data"][0]["z"]  # tensors x steps
        assert [[row[i] for row in z] for i in range(len(steps))] == [r["layer_open"] for r in steps]
    else:
        assert not heat_visible
    page.wait_for_function("() => { const i = document.querySelector('#run-samples-img'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    screenshot(page, f"run-{name}")
    assert not page.errors


@pytest.mark.parametrize("name", [TUNE_REAL, TUNE_NAME])
def test_tuning_view(dashboard, page, runs_root, name):
    exp = runs_root / name
    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    last = {}
    for r in trials:
        last[r["trial_id"]] = r
    page.goto(f"{dashboard.url}/tuning/{name}")
    cells = {r["trial_id"]: r for r in wait_rows(page, "tune-trials-table", len(last))}
    for tid, want in last.items():
        got = cells[tid]
        assert got["status"] == want["status"] and int(got["epochs"]) == want["training_iteration"]
        assert got["stopped_early"] == ("yes" if want["stopped_early"] else "no")
        for k in ("config/tau", "config/lambda_r", "psnr", "accuracy", "gate_open_rate"):
            assert float(got[k]) == shown(want[k]), k
    # the trials folded out of the Runs page are reached from here: each trial's run directory is linked
    trial_dirs = sorted(p.parent.name for p in (exp / "trials").glob("*/run.json"))
    links = page.eval_on_selector_all('#tune-trials-table td[data-dash-column="run"] a',
                                      "els => els.map(e => e.getAttribute('href'))")
    assert sorted(links) == [f"/run/{name}/trials/{t}" for t in trial_dirs]
    if name == TUNE_REAL:
        assert trial_dirs and set(trial_dirs) == set(last)
    pareto = pq.read_table(exp / "pareto.parquet").to_pylist()
    fig = wait_figure(page, "tune-pareto", "f.data.some(t => t.name === 'Pareto front')")
    assert sorted(shown(x) for x in trace(fig, "Pareto front")["x"]) == sorted(shown(r["psnr"]) for r in pareto)
    tau = wait_figure(page, "tune-tau", "f.data.length === 2")
    assert [shown(x) for x in trace(tau, "τ vs psnr")["x"]] == [shown(r["config/tau"]) for r in last.values()]
    obj = figure(page, "tune-objective")
    assert [shown(y) for y in trace(obj, "psnr")["y"]] == [shown(r["psnr"]) for r in last.values()]
    best = sorted((exp / "best").glob("*.yaml"), key=lambda p: (p.name != "best.yaml", p.name))
    page.wait_for_selector(".best-config")
    texts = [t.inner_text() for t in page.locator(".best-config").all()]
    assert [yaml.safe_load(t) for t in texts] == [yaml.safe_load(p.read_text()) for p in best]
    screenshot(page, f"tuning-{name}")
    assert not page.errors


@pytest.mark.parametrize("name", [FED_REAL, FED_NAME])
def test_federation_view(dashboard, page, runs_root, name):
    fed = runs_root / name
    rounds = pq.read_table(fed / "rounds.parquet").to_pylist()
    want_sites = pq.read_table(fed / "sites.parquet").to_pylist()
    page.goto(f"{dashboard.url}/federation/{name}")
    sites = wait_rows(page, "fed-sites-table", len(want_sites))
    assert [r["site"] for r in sites] == [r["site"] for r in want_sites]
    assert [int(r["num_train"]) for r in sites] == [r["num_train"] for r in want_sites]
    order = sorted(r["site"] for r in want_sites)  # the heat map's rows
    cells = wait_rows(page, "fed-rounds-table", len(rounds))
    got = {(int(r["round"]), r["site"]): r for r in cells}
    for want in rounds:
        row = got[(want["round"], want["site"])]
        assert row["status"] == want["status"]
        for k in ("psnr", "accuracy", "gate_open_rate"):
            assert (row[k] == "") if want.get(k) is None else float(row[k]) == shown(want[k]), k
    fails = wait_figure(page, "fed-failures", "f.data.length === 2")
    n_rounds = max(r["round"] for r in rounds)
    for status in ("failed", "rejected"):
        want = [sum(1 for r in rounds if r["round"] == k and r["status"] == status) for k in range(1, n_rounds + 1)]
        assert trace(fails, status)["y"] == want
    heat = wait_figure(page, "fed-heatmap", "f.data.length === 1")
    z = heat["data"][0]["z"]
    for r in rounds:
        if r["site"] != "global":
            v = z[order.index(r["site"])][r["round"] - 1]
            assert v == (shown(r["gate_open_rate"]) if r["status"] == "ok" else None)
    glob = wait_figure(page, "fed-global", "f.data.length >= 2")
    assert [shown(y) for y in trace(glob, "psnr")["y"]] == [shown(r["psnr"]) for r in rounds if r["site"] == "global"]
    curves = wait_figure(page, "fed-curves", "f.data.length >= 4")
    h0 = [t for t in curves["data"] if t["name"] == "hospital-0"][0]
    assert [shown(y) for y in h0["y"]] == [shown(r["psnr"]) for r in rounds
                                            if r["site"] == "hospital-0" and r["status"] == "ok"]
    screenshot(page, f"federation-{name}")
    assert not page.errors
