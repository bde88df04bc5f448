"""The premise check and the report's task conclusions, on results tables built by hand (no training)."""

from __future__ import annotations

import pytest

from gradprom.experiments import premise as prem
from gradprom.experiments.grid import GridSpec
from gradprom.experiments.report import write_report


def _rows(clean: list[float], degraded: list[float], eo: list[float], joint: list[float],
          task: str = "classification", deg: str = "gaussian") -> list[dict]:
    rows = []
    for seed, (c, d, e, j) in enumerate(zip(clean, degraded, eo, joint)):
        base = {"task": task, "degradation": deg, "seed": seed}
        rows += [{**base, "cell": None, "strategy": "clean", "psnr": None, "task_frozen": c,
                  "pred_hist": "0.34/0.33/0.33"},
                 {**base, "cell": None, "strategy": "degraded input", "psnr": 21.0, "task_frozen": d,
                  "pred_hist": "1.00/0.00/0.00"},
                 {**base, "cell": f"eo{seed}", "strategy": "enhance_only", "psnr": 26.0 + 0.1 * seed, "task_frozen": e,
                  "gate_open_rate": 0.0, "mean_cos": -0.01, "neg_cos_share": 0.52, "norm_ratio_median": 0.5},
                 {**base, "cell": f"j{seed}", "strategy": "joint", "psnr": 25.0 + 0.1 * seed, "task_frozen": j,
                  "gate_open_rate": 1.0, "mean_cos": -0.2, "neg_cos_share": 0.8, "norm_ratio_median": 0.5}]
    return rows


def test_premise_holds_when_the_judge_reads_clean_images_and_joint_helps_it():
    # 6 seeds: clean 0.95, degraded 0.50 (headroom 0.45 -> margin max(0.045, 2 SE)), joint beats eo by ~0.1
    rows = _rows([0.95] * 6, [0.50, 0.52, 0.48, 0.50, 0.51, 0.49], [0.60] * 6,
                 [0.70, 0.71, 0.69, 0.72, 0.68, 0.70])
    p = prem.check(rows, "classification")
    assert p["holds"] and not p["reasons"]
    # SE of the degraded score across seeds: SD 0.01414 / sqrt(6) = 0.005774; 2 SE < 10% of headroom 0.045
    assert p["margin"] == pytest.approx(0.045)
    assert p["joint_gain"] == pytest.approx(0.1)
    assert p["hist"]["degraded input"] == "1.00/0.00/0.00"
    assert "task conclusions are drawn here" in prem.statement("x", p)


@pytest.mark.parametrize("case, reason", [
    ("weak judge", "does not read the class"),
    ("no headroom", "no headroom"),
    ("joint does not help", "joint training does not help the independent judge"),
])
def test_a_failed_premise_says_the_setting_cannot_show_task_help(case, reason):
    clean, degraded, eo, joint = [0.95] * 6, [0.5] * 6, [0.6] * 6, [0.7, 0.71, 0.69, 0.72, 0.68, 0.70]
    if case == "weak judge":
        clean = [0.75] * 6
    elif case == "no headroom":
        degraded = [0.94, 0.95, 0.93, 0.95, 0.94, 0.96]
    else:
        joint = [0.61, 0.58, 0.60, 0.62, 0.59, 0.60]
    p = prem.check(_rows(clean, degraded, eo, joint), "classification")
    assert not p["holds"] and any(reason in r for r in p["reasons"]), p["reasons"]
    text = prem.statement("**classification · gaussian**", p)
    assert "cannot show a strategy helping the task" in text and "No task conclusion is drawn" in text
    assert ("is itself a finding" in text) == (case == "joint does not help")


def test_a_weak_segmentation_judge_is_said_to_miss_the_lesions():
    p = prem.check(_rows([0.56] * 6, [0.40] * 6, [0.45] * 6, [0.44] * 6, task="segmentation"), "segmentation")
    assert any("does not find the lesions" in r for r in p["reasons"]), p["reasons"]
    assert not any("read the class" in r for r in p["reasons"])


def test_the_report_of_a_failed_premise_draws_no_task_conclusion(tmp_path):
    """write_report on a hand-built results table: the premise fails (weak judge), so the Conclusions hold no
    task verdict, while the quality statements remain."""
    rows = _rows([0.70] * 6, [0.40] * 6, [0.45] * 6, [0.55] * 6)
    # a λ_r sweep arm of joint, so the report draws joint's Pareto front
    rows += [{**r, "strategy": "joint@3", "cell": f"j3-{r['seed']}", "psnr": r["psnr"] - 1, "task_frozen": 0.6}
             for r in rows if r["strategy"] == "joint"]
    spec = GridSpec(preset="micro", strategies=["enhance_only", "joint", "joint@3"], tasks=["classification"],
                    degradations=["gaussian"], seeds=6)
    md = write_report(tmp_path, spec, rows).read_text()
    assert "| classification | gaussian | accuracy | 0.700 | 0.400 | 0.450 |" in md
    assert "| fails |" in md
    assert "this setting cannot show a strategy helping the task" in md
    conclusions = md.split("## Conclusions", 1)[1]
    assert "judged independently" not in conclusions and "helps the task" not in conclusions
    # the conflict is stated from the enhance_only path only: 52% negative, mean cos -0.010
    assert "cos(g_e, g_r) < 0 on 52% of steps (mean cos -0.010): the gradients are near-orthogonal" in conclusions
    for fig in ("scatter.png", "pareto.png"):
        assert (tmp_path / "report" / "figures" / fig).read_bytes()[:4] == b"\x89PNG"
    assert "figures/pareto.png" in md


def test_lambda_sweep_arms_scale_lambda_r_and_bad_factors_are_clear_errors():
    from gradprom.experiments.grid import sweep_arms
    from gradprom.platform.errors import ConfigError

    arms = sweep_arms(["enhance_only", "joint", "gradprom"], [0.3, 1.0, 3.0])
    assert arms == ["enhance_only", "joint@0.3", "joint", "joint@3", "gradprom@0.3", "gradprom", "gradprom@3"]
    spec = GridSpec(preset="micro", strategies=arms, tasks=["classification"], degradations=["gaussian"], seeds=1)
    spec.validate()
    lam = {c.strategy: spec.cell_config(c, "runs")["gradprom"]["lambda_r"] for c in spec.cells()}
    assert lam["gradprom@3"] == pytest.approx(3 * lam["gradprom"]) and lam["joint@0.3"] == pytest.approx(0.03)
    with pytest.raises(ConfigError, match="NAME@FACTOR"):
        GridSpec(preset="micro", strategies=["gradprom@-1"]).validate()


def test_the_medium_preset_runs_its_own_axes_and_fits_the_hour_by_its_stated_cost():
    spec = GridSpec.for_preset("medium")
    assert spec.tasks == ["classification"] and spec.degradations == ["gaussian", "lowdose"]
    assert {"gradprom_matched", "gradprom_separate", "gradprom_precond", "cosine_weighted"} <= set(spec.strategies)
    from gradprom.experiments.grid import PRESETS

    p = PRESETS["medium"]
    steps = p.epochs * (p.num_train // p.batch_size)
    assert p.seeds >= 6 and p.num_test == 256 and 300 <= steps <= 500
    # the estimate in grid.py: 0.088 s per step (audit, 2 idle cores) + ~3 s evaluation per cell
    assert len(spec.cells()) * (steps * 0.088 + 3) / 60 <= 60
    spec.validate()
