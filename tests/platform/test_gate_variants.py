"""The gate variants of issue 14 on the real training step: magnitude control, separate moments, the
preconditioned gate and the optimizer choice, each against the guarantee it claims."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradprom.platform.config import build_config
from gradprom.platform.magnitude import TaskScaler
from gradprom.platform.optim import TwoPartAdam, build_optimizer
from gradprom.platform.step import TrainStep
from gradprom.platform.strategies import CosineWeighted, EnhanceOnly, GradProm, ParamLayout, cosine

from ._inputs import pair_with_cosine
from ._models import flat_params, reference_gradients, tiny

LAYOUT = ParamLayout(["a", "b", "c"], [100, 57, 100])


def _step(E, R, strategy, opt_e, **kw) -> TrainStep:
    return TrainStep(E, R, opt_e, torch.optim.Adam(R.parameters(), lr=1e-3), strategy, **kw)


# ---- 1. magnitude control -------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(tau=st.floats(0.0, 1.0), cos=st.floats(-1.0, 1.0), seed=st.integers(0, 10_000), log_r=st.floats(-6, 6),
       mode=st.sampled_from(["match", "clip"]), alpha=st.floats(0.01, 10.0), layer=st.booleans(),
       relax=st.floats(0.0, 1.0))
def test_positive_scaling_keeps_the_descent_guarantee_and_the_gate_decision(tau, cos, seed, log_r, mode, alpha,
                                                                             layer, relax):
    g_e, g_r = pair_with_cosine(cos, n=257, seed=seed, scale_r=10.0 ** log_r)
    g_r = g_r + 0.3 * torch.randn(257, generator=torch.Generator().manual_seed(seed + 1)) * g_r.norm() / 16
    g_e, g_r = g_e.double(), g_r.double()
    gran = "layer" if layer else "global"
    gate = GradProm(tau, gran)
    scaled, applied = TaskScaler(mode, alpha, gran, relax=relax)(g_e, g_r, LAYOUT)
    d = gate(g_e, scaled, LAYOUT, cos=cosine(g_e, g_r))
    assert float(d.update @ g_e) >= float(g_e @ g_e) * (1 - 1e-9) - 1e-12
    assert float(d.gate_open) == float(gate(g_e, g_r, LAYOUT).gate_open)  # the gate is scale-invariant
    assert float(applied) >= 0


def test_match_sets_the_norm_clip_only_shrinks_and_the_ema_smooths():
    g_e, g_r = pair_with_cosine(0.4, seed=2, scale_e=2.0, scale_r=8.0)
    scaled, f = TaskScaler("match", 0.5)(g_e, g_r, LAYOUT)
    assert float(scaled.norm()) == pytest.approx(0.5 * 2.0, rel=1e-5) and float(f) == pytest.approx(0.125, rel=1e-5)
    clipped, f = TaskScaler("clip", 1.0)(g_e, g_r, LAYOUT)
    assert float(clipped.norm()) == pytest.approx(2.0, rel=1e-5)
    small, f = TaskScaler("clip", 1.0)(g_e, g_r / 100, LAYOUT)
    assert float(f) == 1.0 and torch.equal(small, g_r / 100)
    per_layer, _ = TaskScaler("match", 1.0, "layer")(g_e, g_r, LAYOUT)
    for a, b in zip(per_layer.split(LAYOUT.sizes), g_e.split(LAYOUT.sizes), strict=True):
        assert float(a.norm()) == pytest.approx(float(b.norm()), rel=1e-5)
    s = TaskScaler("match", 1.0, ema=0.5)
    s(g_e, g_r, LAYOUT)  # norms (2, 8)
    _, f = s(g_e, 2 * g_r, LAYOUT)  # EMA norms (2, 12): factor 2/12
    assert float(f) == pytest.approx(2.0 / 12.0, rel=1e-5)


def test_the_step_logs_the_applied_scale(device):
    E, R, x_lq, x_hq, y = tiny(device=device, seed=4)
    g_e, g_r, _ = reference_gradients(E, R, x_lq, x_hq, y)
    opt = torch.optim.SGD(E.parameters(), lr=1.0)
    step = _step(E, R, GradProm(-1.0), opt, scaler=TaskScaler("match", 0.5))
    e0 = flat_params(E)
    res = step(x_lq, x_hq, y)
    f = 0.5 * float(g_e.norm() / g_r.norm())
    assert res.scale == pytest.approx(f, rel=1e-4) and res.row()["scale"] == res.scale
    torch.testing.assert_close(e0 - flat_params(E), g_e + f * g_r, atol=1e-5, rtol=1e-4)
    assert _step(*tiny(device=device)[:2], GradProm(), torch.optim.SGD(E.parameters(), lr=1.0)).scaler is None


# ---- 2. separate moments: a closed gate is exactly an enhance-only Adam step ------------------------------------
def _trajectory(make_opt, strategy, steps=4, seed=5, gate_metric="euclidean"):
    E, R, _, _, _ = tiny(seed=seed)
    step = _step(E, R, strategy, make_opt(E.parameters()), gate_metric=gate_metric)
    out = []
    for k in range(steps):
        _, _, x_lq, x_hq, y = tiny(seed=100 + k)
        step(x_lq, x_hq, y)
        out.append(flat_params(E))
    return out


@pytest.mark.parametrize("moments,precond", [("separate", False), ("separate", True), ("shared", True)])
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_closed_gate_is_enhance_only_adam_bit_for_bit_and_open_differs(moments, precond, decoupled):
    wd = 0.01 if decoupled else 0.0
    plain = torch.optim.AdamW if decoupled else torch.optim.Adam
    reference = _trajectory(lambda p: plain(p, lr=1e-2, weight_decay=wd), EnhanceOnly())

    def two_part(p):
        return TwoPartAdam(p, lr=1e-2, weight_decay=wd, decoupled_weight_decay=decoupled, moments=moments,
                           preconditioned=precond)

    metric = "preconditioned" if precond else "euclidean"
    closed = _trajectory(two_part, GradProm(1.0), gate_metric=metric)  # cos > 1 never holds
    assert all(torch.equal(a, b) for a, b in zip(closed, reference, strict=True))
    opened = _trajectory(two_part, GradProm(-1.0), gate_metric=metric)
    assert not torch.equal(opened[0], reference[0])


def test_two_part_adam_follows_its_definition():
    """Two steps by hand: open (task moments start), then closed (task moments frozen, no task step)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = TwoPartAdam([p], lr=0.1, moments="separate")
    b1, b2, eps = 0.9, 0.999, 1e-8
    ge1, a1, ge2 = torch.tensor([0.5, 0.1, -0.2]), torch.tensor([3.0, -1.0, 0.5]), torch.tensor([0.1, 0.2, 0.3])
    m_e = (1 - b1) * ge1
    v_e = (1 - b2) * ge1 ** 2
    m_r, v_r = (1 - b1) * a1, (1 - b2) * a1 ** 2
    expected = p.detach() - 0.1 * ((m_e / (1 - b1)) / ((v_e / (1 - b2)).sqrt() + eps)
                                   + (m_r / (1 - b1)) / ((v_r / (1 - b2)).sqrt() + eps))
    p.grad = ge1.clone()
    opt.set_task_part(a1, torch.ones(3))
    opt.step()
    torch.testing.assert_close(p.detach(), expected)
    m_e, v_e = b1 * m_e + (1 - b1) * ge2, b2 * v_e + (1 - b2) * ge2 ** 2
    expected = expected - 0.1 * (m_e / (1 - b1 ** 2)) / ((v_e / (1 - b2 ** 2)).sqrt() + eps)
    p.grad = ge2.clone()
    opt.set_task_part(torch.zeros(3), torch.zeros(3))
    opt.step()
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(opt.state["task"]["exp_avg_r"], m_r)  # not decayed by the closed step


def test_two_part_adam_state_survives_a_checkpoint_round_trip():
    runs = []
    for reload in (False, True):
        E, R, _, _, _ = tiny(seed=6)
        opt = TwoPartAdam(E.parameters(), lr=1e-2, moments="separate")
        step = _step(E, R, GradProm(-1.0), opt)
        for k in range(4):
            if reload and k == 2:
                state = opt.state_dict()
                opt = TwoPartAdam(E.parameters(), lr=1e-2, moments="separate")
                opt.load_state_dict(state)
                step.opt_e = opt
            _, _, x_lq, x_hq, y = tiny(seed=200 + k)
            step(x_lq, x_hq, y)
        runs.append(flat_params(E))
    assert torch.equal(runs[0], runs[1])


# ---- 3. preconditioned gate: <step, g_e> >= lr g_e^T P g_e without momentum ------------------------------------
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), tau=st.floats(0.0, 0.9), lam=st.floats(0.01, 10.0), layer=st.booleans(),
       moments=st.sampled_from(["shared", "separate"]), warm=st.integers(0, 2))
def test_preconditioned_gate_step_descends_in_adams_metric(seed, tau, lam, layer, moments, warm):
    E, R, x_lq, x_hq, y = tiny(seed=seed)
    opt = TwoPartAdam(E.parameters(), lr=1e-3, betas=(0.0, 0.999), moments=moments, preconditioned=True)
    step = _step(E, R, GradProm(tau, "layer" if layer else "global"), opt, lambda_r=lam,
                 gate_metric="preconditioned")
    for k in range(warm):  # some history in v_e first
        _, _, a, b, c = tiny(seed=seed + 500 + k)
        step(a, b, c)
    g_e, g_r, _ = reference_gradients(E, R, x_lq, x_hq, y, lambda_r=lam)
    P = opt.preconditioner(g_e)
    e0 = flat_params(E)
    res = step(x_lq, x_hq, y)
    delta = (e0 - flat_params(E)).double()
    ge = g_e.double()
    assert float(delta @ ge) >= 1e-3 * float(ge @ (P.double() * ge)) * (1 - 1e-3)
    s = P.sqrt()
    assert res.cos == pytest.approx(float(cosine(s * g_e, s * g_r)), abs=1e-3)  # the gate saw the P-cosine


# ---- 4. SGD: the paper's theorem for the step taken, for every gating variant -----------------------------------
VARIANTS = [(GradProm, "global", "none"), (GradProm, "layer", "none"), (GradProm, "global", "match"),
            (GradProm, "global", "clip"), (GradProm, "layer", "match"), (CosineWeighted, "global", "none"),
            (CosineWeighted, "layer", "match"), (CosineWeighted, "global", "clip")]


@settings(max_examples=16, deadline=None)
@given(seed=st.integers(0, 1000), tau=st.floats(0.0, 0.9), lam=st.floats(0.01, 10.0),
       variant=st.sampled_from(VARIANTS), alpha=st.floats(0.1, 4.0), task=st.sampled_from(["classification",
                                                                                              "segmentation"]))
def test_sgd_step_never_increases_the_enhancement_loss_to_first_order(seed, tau, lam, variant, alpha, task):
    cls, gran, scale = variant
    E, R, x_lq, x_hq, y = tiny(task, seed=seed)
    lr = 1e-4
    g_e, _, _ = reference_gradients(E, R, x_lq, x_hq, y, lambda_r=lam, task=task)
    strategy = GradProm(tau, gran) if cls is GradProm else CosineWeighted(gran)
    scaler = None if scale == "none" else TaskScaler(scale, alpha, gran)
    opt = build_optimizer(E.parameters(), "sgd", lr)
    step = _step(E, R, strategy, opt, lambda_r=lam, task=task, scaler=scaler)
    e0 = flat_params(E)
    step(x_lq, x_hq, y)
    delta = (flat_params(E) - e0).double()  # dL_e ~ <g_e, delta> to first order
    ge = g_e.double()
    assert float(ge @ delta) <= -lr * float(ge @ ge) * (1 - 1e-3)


# ---- 5. wiring: the config builds what it names -------------------------------------------------------------------
def test_config_builds_the_optimizers_and_the_step_options():
    from gradprom.platform.build import build_models
    from gradprom.platform.data.dataset import DataInfo

    class Info(DataInfo):
        def __init__(self):
            super().__init__(channels=1, image_size=(32, 32), num_classes=3, seg_classes=0, source="test")

    def built(**sections):
        cfg = build_config({"model": {"enhancer_channels": [4, 8], "recognizer_channels": [4, 8]}, **sections})
        m = build_models(cfg, Info(), 1, torch.device("cpu"))
        return cfg, m, TrainStep.from_config(cfg, m.enhancer, m.recognizer, m.opt_e, m.opt_r)

    _, m, st_ = built()
    assert type(m.opt_e) is torch.optim.Adam and st_.scaler is None and st_.gate_metric == "euclidean"
    _, m, _ = built(optim={"optimizer": "sgd", "momentum": 0.9})
    assert type(m.opt_e) is torch.optim.SGD and m.opt_e.defaults["momentum"] == 0.9
    _, m, _ = built(optim={"optimizer": "adamw", "weight_decay": 0.01})
    assert type(m.opt_e) is torch.optim.AdamW and type(m.opt_r) is torch.optim.AdamW
    _, m, st_ = built(gradprom={"strategy": "gradprom_separate"})
    assert isinstance(m.opt_e, TwoPartAdam) and m.opt_e.moments == "separate" and not m.opt_e.preconditioned
    assert type(m.opt_r) is torch.optim.Adam
    _, m, st_ = built(gradprom={"strategy": "gradprom_precond"})
    assert isinstance(m.opt_e, TwoPartAdam) and m.opt_e.preconditioned and st_.gate_metric == "preconditioned"
    _, _, st_ = built(gradprom={"strategy": "gradprom_matched", "scale_factor": 0.5, "scale_ema": 0.9})
    assert st_.scaler == TaskScaler("match", 0.5, "global", 0.9, 1.0)


# ---- 6. end to end: `gradprom train --strategy <grid arm>` records the variant and resumes it --------------------
@pytest.mark.slow
def test_train_with_a_grid_arm_records_the_variant_and_resumes(tmp_path, capsys):
    import yaml

    from gradprom.cli import main
    from gradprom.platform.checkpoint import load_checkpoint
    from gradprom.platform.rundir import RunDir

    tiny_run = ["--set", "data.num_train=16", "--set", "data.num_val=8", "--set", "data.num_test=8",
                "--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "model.enhancer_channels=[4,8]",
                "--set", "model.recognizer_channels=[4,8]", "--epochs", "1", "--out", str(tmp_path)]
    assert main(["-q", "train", *tiny_run, "--strategy", "gradprom_separate", "--scale", "match", "--name", "a"]) == 0
    run = RunDir(tmp_path / "a")
    info, cfg = run.read_run(), yaml.safe_load(run.config_yaml.read_text())
    assert (info["strategy"], info["moments"], info["scale"], info["gate_metric"]) == ("gradprom", "separate",
                                                                                       "match", "euclidean")
    assert cfg["gradprom"]["moments"] == "separate" and cfg["gradprom"]["strategy"] == "gradprom"
    steps = run.read_steps().to_pylist()
    assert len(steps) == 2 and all(r["scale"] > 0 for r in steps)
    state = load_checkpoint(run.latest_checkpoint())
    assert "task" in state["opt_e"]["state"]  # TwoPartAdam's task moments are checkpointed
    assert main(["-q", "train", "--resume", str(run.path), "--epochs", "2"]) == 0
    assert len(run.read_steps().to_pylist()) == 4
    capsys.readouterr()
    assert main(["-q", "train", *tiny_run, "--strategy", "gradprom_layer", "--granularity", "global"]) == 2
    err = capsys.readouterr().err
    assert "gradprom_layer" in err and "granularity: layer" in err and "Traceback" not in err


def test_the_variants_are_arms_of_the_experiment_grid():
    from gradprom.experiments.grid import ADAM_VARIANTS, STRATEGIES, Cell, GridSpec

    assert set(ADAM_VARIANTS) <= set(STRATEGIES)
    assert list(GridSpec().strategies) == ["enhance_only", "joint", "pcgrad", "cosine_weighted", "gradprom",
                                           "gradprom_layer", "gradprom_output"]  # the default grid is unchanged
    spec = GridSpec(preset="micro", strategies=list(ADAM_VARIANTS))
    spec.validate()
    fields = {"gradprom_matched": ("scale", "match"), "gradprom_separate": ("moments", "separate"),
              "gradprom_precond": ("gate_metric", "preconditioned")}
    for arm, (key, value) in fields.items():
        cfg = build_config(spec.cell_config(Cell("classification", "gaussian", arm, 0), "runs"))
        assert getattr(cfg.gradprom, key) == value and cfg.gradprom.strategy == "gradprom"


@pytest.mark.slow
def test_a_resumed_run_keeps_the_scalers_ema_and_matches_the_uninterrupted_run(tmp_path):
    """The EMA of the norms is state of the step: without it in the checkpoint, the first resumed step would
    scale g_r by its own norms alone and the resumed run would leave the uninterrupted one's trajectory."""
    import torch

    from gradprom.cli import main
    from gradprom.platform.checkpoint import load_checkpoint
    from gradprom.platform.rundir import RunDir

    tiny_run = ["--set", "data.num_train=16", "--set", "data.num_val=8", "--set", "data.num_test=8",
                "--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "model.enhancer_channels=[4,8]",
                "--set", "model.recognizer_channels=[4,8]", "--out", str(tmp_path), "--strategy", "gradprom",
                "--scale", "match", "--set", "gradprom.scale_ema=0.9"]
    assert main(["-q", "train", *tiny_run, "--epochs", "2", "--name", "whole"]) == 0
    assert main(["-q", "train", *tiny_run, "--epochs", "1", "--name", "halves"]) == 0
    halves = RunDir(tmp_path / "halves")
    assert load_checkpoint(halves.latest_checkpoint())["scaler"]["norms"].shape == (2,)
    assert main(["-q", "train", "--resume", str(halves.path), "--epochs", "2"]) == 0
    whole = RunDir(tmp_path / "whole")
    a, b = (load_checkpoint(r.latest_checkpoint()) for r in (whole, halves))
    assert torch.equal(a["scaler"]["norms"], b["scaler"]["norms"])
    for k, v in a["enhancer"].items():
        assert torch.allclose(v, b["enhancer"][k], atol=1e-6), k
    assert [r["scale"] for r in whole.read_steps().to_pylist()] == pytest.approx(
        [r["scale"] for r in halves.read_steps().to_pylist()], rel=1e-6)
