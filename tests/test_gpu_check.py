"""benchmarks/gpu_check.py --dry-run: every stage runs on the CPU at tiny sizes and writes real figures."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_dry_run_writes_every_stage(dry_run):
    out, r = dry_run
    assert r["dry_run"] is True
    assert list(r["stages"]) == ["env", "tests", "bf16", "step", "compile", "ray", "cell"]
    for name, st in r["stages"].items():
        assert st["status"] in ("ok", "skipped"), (name, st)
        assert st["seconds"] >= 0
    assert r["stages"]["ray"]["status"] == "skipped" and r["stages"]["ray"]["reason"]
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary and "## bf16 vs fp32" in summary and "## One `micro` cell" in summary


@pytest.mark.slow
def test_dry_run_unit_tests_ran_on_the_device(dry_run):
    out, r = dry_run
    t = r["stages"]["tests"]
    assert t["device"] == "cpu" and t["returncode"] == 0
    assert t["counts"]["passed"] >= 5 and t["counts"]["failures"] == 0 and t["counts"]["errors"] == 0
    assert (out / "pytest-junit.xml").is_file() and "passed" in (out / "pytest.log").read_text()


@pytest.mark.slow
def test_dry_run_bf16_comparison_has_real_values(dry_run):
    b = dry_run[1]["stages"]["bf16"]
    for part in ("same_weights", "trajectories"):
        assert b[part]["steps"] == b["steps_asked"] == 8
        assert 0.0 <= b[part]["identical_gate_share"] <= 1.0
        assert 0.0 <= b[part]["mean_abs_dcos"] <= 2.0
    for probe in ("both", "enhancer_only", "recognizer_only"):
        assert 0.0 <= b["same_weights"][probe]["identical_gate_share"] <= 1.0
        assert b["same_weights"][probe]["mean_abs_dcos"] >= 0.0
    assert isinstance(b["bf16_changes_gate"], bool) and b["verdict"].startswith("bf16 ")
    psnr = b["trajectories"]["final_psnr"]
    assert all(10.0 < psnr[k] < 100.0 for k in ("fp32", "bf16"))
    assert b["dtypes_under_autocast"]["grads"] == "torch.float32"
    assert len(b["cos_series"]["bf16_at_fp32_weights"]) == 8


@pytest.mark.slow
def test_dry_run_step_and_compile_timings(dry_run):
    st = dry_run[1]["stages"]
    run = st["step"]["runs"]["32x4"]
    assert set(run["ms"]) >= {"joint", "floor", "gradprom", "gradprom-batched", "gradprom-out"}
    assert all(v > 0 for v in run["ms"].values()) and run["repeats"] >= 1
    assert run["ratios"]["gradprom/joint"] > 0 and run["ratios"]["gradprom-batched/gradprom"] > 0
    comp = st["compile"]["runs"]["32x4"]
    assert comp["errors"] == {}, comp["errors"]
    assert comp["ms"]["gradprom-compiled"] > 0 and isinstance(st["compile"]["pays"], bool)
    assert st["compile"]["compile_seconds"] > 0


@pytest.mark.slow
def test_dry_run_cell_extrapolation(dry_run):
    from gradprom.experiments.grid import PRESETS, GridSpec

    c = dry_run[1]["stages"]["cell"]
    p = PRESETS["micro"]
    assert c["grid_cells"] == len(GridSpec(preset="micro").cells())
    assert c["steps_per_epoch"] == math.ceil(p.num_train / p.batch_size)
    for task in ("classification", "segmentation"):
        t = c["tasks"][task]
        assert t["ms_per_step"] > 0 and t["steps_timed"] >= 3 and t["cells"] > 0
        assert t["grid_hours"] == pytest.approx(t["cells"] * t["cell_hours"])
    assert c["grid_hours"] == pytest.approx(sum(t["grid_hours"] for t in c["tasks"].values()))


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_unknown_stage_is_a_clear_error(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--stages", "env,bogus", "--out", str(tmp_path / "o")]) == 2
    assert "--stages: unknown ['bogus']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_full_run_without_cuda_is_a_clear_error(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--stages", "env", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--dry-run" in err
    assert not (tmp_path / "o").exists()
