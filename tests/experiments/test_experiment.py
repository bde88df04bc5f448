"""The evidence grid: the micro grid end to end (table, Markdown, figures, reuse), the frozen judge, and the
conflict the phantoms must carry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from gradprom.cli import main
from gradprom.experiments.frozen import ensure_frozen_recognizer, frozen_path
from gradprom.experiments.grid import PRESETS, GridSpec
from gradprom.experiments.runner import run_grid


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_micro_grid_writes_table_report_figures_and_reuses_cells(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["-q", "experiment", "--preset", "micro", "--strategies", "enhance_only,joint,gradprom", "--tasks",
            "classification", "--degradations", "gaussian", "--out", str(out)]
    assert main(argv) == 0
    rows = pq.read_table(out / "results.parquet").to_pylist()
    cells = [r for r in rows if r["cell"]]
    assert sorted((r["strategy"], r["seed"]) for r in cells) == [("enhance_only", 0), ("enhance_only", 1),
                                                                  ("gradprom", 0), ("gradprom", 1),
                                                                  ("joint", 0), ("joint", 1)]
    for r in cells:
        for k in ("psnr", "ssim", "task_joint", "task_frozen", "gate_open_rate", "mean_cos", "neg_cos_share",
                  "norm_ratio_median"):
            assert r[k] is not None and r[k] == r[k], (k, r)
        assert r["gate_open_rate"] == (0.0 if r["strategy"] == "enhance_only" else r["gate_open_rate"])
        assert r["norm_ratio_median"] > 0
        # the judge's class histogram: one share per class, summing to 1
        assert abs(sum(float(x) for x in r["pred_hist"].split("/")) - 1) < 0.02
    refs = {(r["strategy"], r["seed"]) for r in rows if not r["cell"]}
    assert refs == {("degraded input", 0), ("degraded input", 1), ("clean", 0), ("clean", 1)}
    # the table agrees with each cell's own files
    one = next(r for r in cells if r["strategy"] == "gradprom" and r["seed"] == 1)
    cell_dir = out / "runs" / one["cell"]
    assert json.loads((cell_dir / "cell.json").read_text())["psnr"] == pytest.approx(one["psnr"])
    per_image = pq.read_table(cell_dir / "per_image.parquet").to_pylist()
    assert len(per_image) == PRESETS["micro"].num_test
    assert sum(r["psnr"] for r in per_image) / len(per_image) == pytest.approx(one["psnr"], rel=1e-6)

    md = (out / "report" / "report.md").read_text()
    for part in ("## classification · gaussian", "| enhance_only |", "| gradprom |", "| degraded input |",
                 "## Premise", "| classification | gaussian | accuracy |", "judge classes", "| 95% CI |",
                 "q (BH)", "median ‖g_r‖/‖g_e‖", "gradprom − enhance_only (vs enhance_only) | PSNR (dB)",
                 "loss upper bound", "## Conclusions", "figures/gate-classification-gaussian.png",
                 "figures/samples-classification-gaussian.png", "figures/curves-classification-gaussian.png",
                 "figures/scatter.png", "smallest possible p is 0.5"):
        assert part in md, part
    # non-inferiority verdicts, one per strategy against enhance_only
    assert md.count("non-inferior; loss upper bound") + md.count("| lower PSNR") >= 2
    assert "keeps enhance_only's image quality" in md or "not shown to keep enhance_only's" in md \
        or "costs image quality" in md
    for fig in ("gate-classification-gaussian.png", "samples-classification-gaussian.png", "scatter.png",
                "curves-classification-gaussian.png"):
        assert (out / "report" / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # re-running reuses every finished cell: no training, the run files are untouched
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == stamps


@pytest.mark.slow
def test_a_judge_trained_with_another_config_is_not_reused(tmp_path):
    """Audit D14: the clean judge records what it was trained on; another contrast raises instead of reusing."""
    from gradprom.platform.errors import ConfigError

    spec = GridSpec(preset="micro", strategies=["joint"], tasks=["classification"], degradations=["gaussian"], seeds=1)
    raw = spec.cell_config(spec.cells()[0], str(tmp_path / "runs"))
    path = ensure_frozen_recognizer(raw, tmp_path / "frozen", 1, torch.device("cpu"))
    assert ensure_frozen_recognizer(raw, tmp_path / "frozen", 1, torch.device("cpu")) == path  # same: reused
    other = {**raw, "data": {**raw["data"], "texture_contrast": 0.2}}
    with pytest.raises(ConfigError, match=r"another configuration \(data\)"):
        ensure_frozen_recognizer(other, tmp_path / "frozen", 1, torch.device("cpu"))
    with pytest.raises(ConfigError, match="epochs"):
        ensure_frozen_recognizer(raw, tmp_path / "frozen", 2, torch.device("cpu"))
    # the judge is independent of the cells' recognizer: another architecture for classification
    sd = torch.load(path, weights_only=True)
    assert sd["identity"]["recognizer"] == "densenet" and sd["identity"]["seed"] != 0


@pytest.mark.slow
def test_interrupted_grid_continues(tmp_path):
    """A cell whose training stopped half-way is resumed, not restarted; finished cells are reused."""
    spec = GridSpec(preset="micro", strategies=["joint"], tasks=["classification"], degradations=["sr2"], seeds=1)
    out = tmp_path / "g"
    run_grid(spec, out, progress=False)
    cell = out / "runs" / "classification-sr2-joint-s0"
    (cell / "cell.json").unlink()  # as if the grid died before evaluating this cell
    rows = run_grid(spec, out, progress=False)
    assert (cell / "cell.json").is_file() and len([r for r in rows if r["cell"]]) == 1


@pytest.mark.slow
def test_frozen_recognizer_is_really_frozen(tmp_path):
    spec = GridSpec(preset="micro", strategies=["joint", "gradprom"], tasks=["classification"],
                    degradations=["gaussian"], seeds=1)
    out = tmp_path / "g"
    cell = spec.cells()[0]
    path = ensure_frozen_recognizer(spec.cell_config(cell, str(out / "runs")), out / "frozen",
                                    PRESETS["micro"].frozen_epochs, torch.device("cpu"))
    assert path == frozen_path(out / "frozen", "classification")
    before = torch.load(path, weights_only=True)["recognizer"]
    digest, mtime = _sha(path), path.stat().st_mtime_ns
    run_grid(spec, out, progress=False)
    after = torch.load(path, weights_only=True)["recognizer"]
    assert _sha(path) == digest and path.stat().st_mtime_ns == mtime
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_phantoms_carry_a_conflict(task):
    """At a small fixed budget (the quick preset's cell, Gaussian noise, seed 0), joint training lowers PSNR by
    more than 0.1 dB against enhance-only, and cos(g_e, g_r) < 0 on more than 30 % of the steps of the two runs
    together (pooled over both runs, as the report did before issue 21 measured it on the enhance_only path
    alone; segmentation measured 23 % under enhance-only and 94 % under joint)."""
    import tempfile

    from gradprom.experiments.cells import gate_stats
    from gradprom.platform.config import build_config
    from gradprom.platform.loop import train
    from gradprom.platform.rundir import RunDir

    spec = GridSpec(preset="quick", tasks=[task], degradations=["gaussian"], seeds=1)
    psnr, neg = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for strategy in ("enhance_only", "joint"):
            cell = next(c for c in spec.cells() if c.strategy == strategy)
            path = train(build_config(spec.cell_config(cell, d)), progress=False)
            psnr[strategy] = RunDir(path).read_run()["test"]["psnr"]
            neg[strategy] = gate_stats(path)["neg_cos_share"]
    assert psnr["joint"] < psnr["enhance_only"] - 0.1, psnr
    assert (neg["enhance_only"] + neg["joint"]) / 2 > 0.3, neg


@pytest.mark.slow
def test_a_cell_run_with_another_config_is_not_reused(tmp_path):
    spec = GridSpec(preset="micro", strategies=["gradprom"], tasks=["classification"], degradations=["gaussian"],
                    seeds=1)
    run_grid(spec, tmp_path, progress=False)
    changed = GridSpec(preset="micro", strategies=["gradprom"], tasks=["classification"], degradations=["gaussian"],
                       seeds=1, device="cpu")
    import dataclasses

    from gradprom.experiments import grid as grid_mod
    from gradprom.platform.errors import ConfigError

    original = grid_mod.PRESETS["micro"]
    grid_mod.PRESETS["micro"] = dataclasses.replace(original, epochs=original.epochs + 1)
    try:
        with pytest.raises(ConfigError, match=r"different configuration \(optim.epochs"):
            run_grid(changed, tmp_path, progress=False)
    finally:
        grid_mod.PRESETS["micro"] = original


def test_bad_grid_names_are_clear_errors(capsys):
    assert main(["experiment", "--strategies", "gradprom,nope", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "experiment strategy" in err and "nope" in err and "Traceback" not in err
    assert main(["experiment", "--seeds", "0", "--out", "unused"]) == 2


@pytest.mark.slow
def test_the_grid_runs_on_a_users_npz_with_the_premise_table(tmp_path):
    """`gradprom experiment --data my.npz`: the same grid, judge and premise table on a MedMNIST-style file."""
    import numpy as np

    from gradprom.platform.data.phantoms import make_phantoms

    arrays = {}
    for split, n, offset in (("train", 48, 0), ("val", 16, 1000), ("test", 16, 2000)):
        ph = make_phantoms(n, seed=5, size=32, version=2, texture_contrast=0.14, offset=offset)
        arrays[f"{split}_images"] = (ph.images[:, 0] * 255).round().astype(np.uint8)
        arrays[f"{split}_labels"] = ph.labels[:, None].astype(np.uint8)
    npz = tmp_path / "mine.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "g"
    assert main(["-q", "experiment", "--preset", "micro", "--data", str(npz), "--strategies", "enhance_only,joint",
                 "--tasks", "classification", "--degradations", "gaussian", "--seeds", "1", "--out", str(out)]) == 0
    md = (out / "report" / "report.md").read_text()
    assert f"data `{npz}`" in md
    assert "## Premise" in md and "| classification | gaussian | accuracy |" in md
    # one seed gives no bound on joint's gain: the premise fails and says why
    assert "one seed gives no bound" in md and "cannot show a strategy helping the task" in md
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["strategy"] for r in rows} == {"enhance_only", "joint", "clean", "degraded input"}
    per_image = pq.read_table(out / "runs" / "classification-gaussian-joint-s0" / "per_image.parquet")
    assert per_image.num_rows == 16


@pytest.mark.slow
def test_medium_path_warm_start_pilot_and_testbed_on_a_micro_budget(tmp_path, monkeypatch):
    """The medium preset's machinery at micro size: phantoms v2, a warm-started R with instance norm, λ_r from
    the norm-ratio pilot (training split only), a gate-variant arm, and the report saying so."""
    import dataclasses

    from gradprom.experiments import grid as grid_mod
    from gradprom.platform.config import load_config_file

    m = grid_mod.PRESETS["medium"]
    tiny = dataclasses.replace(grid_mod.PRESETS["micro"], phantom_version=m.phantom_version,
                               texture_contrast=m.texture_contrast, warm_start_epochs=1,
                               recognizer_norm=m.recognizer_norm, lambda_r_target_ratio=m.lambda_r_target_ratio,
                               pilot_epochs=1, seeds=1)
    monkeypatch.setitem(grid_mod.PRESETS, "tiny-medium", tiny)
    spec = GridSpec(preset="tiny-medium", strategies=["enhance_only", "joint", "gradprom_matched"],
                    tasks=["classification"], degradations=["gaussian"])
    out = tmp_path / "g"
    run_grid(spec, out, progress=False)
    pilot = json.loads((out / "pilot.json").read_text())["classification"]
    assert pilot["lambda_r"] == pytest.approx(0.5 / pilot["median_norm_ratio_at_lambda_1"])
    warm = out / "frozen" / "warm-classification.pt"
    assert torch.load(warm, weights_only=True)["identity"]["role"] == "warm"
    cfg = load_config_file(out / "runs" / "classification-gaussian-joint-s0" / "config.yaml")
    assert cfg["gradprom"]["lambda_r"] == pytest.approx(pilot["lambda_r"])
    assert cfg["gradprom"]["recognizer_checkpoint"] == str(warm)
    assert cfg["model"]["recognizer_norm"] == "instance" and cfg["data"]["phantom_version"] == 2
    from gradprom.experiments.report import write_report

    md = write_report(out, spec, pq.read_table(out / "results.parquet").to_pylist()).read_text()
    assert "warm-started from a recognizer trained 1 epochs on clean images" in md
    assert "set by the pilot rule" in md and "phantoms v2" in md
    assert "gradprom_matched − enhance_only (vs enhance_only)" in md
