"""The training step against plain backward() references, the reducer hook, recognizer modes, the
output-space gate, non-finite handling and the descent guarantee on random models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradprom.platform.errors import TrainingError
from gradprom.platform.step import TrainStep
from gradprom.platform.strategies import EnhanceOnly, GradProm, Joint, cosine, make_strategy

from ._models import flat_params, reference_gradients, tiny


def make_step(E, R, strategy, lr=1.0, **kw):
    """A step with SGD(lr=1), so the applied update is simply old - new parameters."""
    return TrainStep(E, R, torch.optim.SGD(E.parameters(), lr=lr), torch.optim.SGD(R.parameters(), lr=lr),
                     strategy, **kw)


def applied_update(E, R, step, x_lq, x_hq, y):
    e0, r0 = flat_params(E), flat_params(R)
    res = step(x_lq, x_hq, y)
    return e0 - flat_params(E), r0 - flat_params(R), res


@pytest.mark.parametrize("task", ["classification", "segmentation"])
@pytest.mark.parametrize("strategy,use_r", [(Joint(), True), (EnhanceOnly(), False)], ids=["joint", "enhance_only"])
@pytest.mark.parametrize("vjp", ["sequential", "batched"])
def test_joint_and_enhance_only_match_two_backward_calls(task, strategy, use_r, vjp, device):
    E, R, x_lq, x_hq, y = tiny(task, device=device)
    g_e, g_r, g_R = reference_gradients(E, R, x_lq, x_hq, y, task=task)
    d_e, d_r, res = applied_update(E, R, make_step(E, R, strategy, task=task, vjp=vjp), x_lq, x_hq, y)
    expected = g_e + g_r if use_r else g_e
    torch.testing.assert_close(d_e, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(d_r, g_R, atol=1e-5, rtol=1e-4)
    assert res.norm_ge == pytest.approx(float(g_e.norm()), rel=1e-4)
    assert res.norm_gr == pytest.approx(float(g_r.norm()), rel=1e-4)
    assert res.cos == pytest.approx(float(cosine(g_e, g_r)), abs=1e-4)


@pytest.mark.parametrize("offset", [-0.05, +0.05])
def test_gradprom_step_gates_on_parameter_space_cosine(offset, device):
    E, R, x_lq, x_hq, y = tiny(device=device, seed=3)
    g_e, g_r, _ = reference_gradients(E, R, x_lq, x_hq, y)
    c = float(cosine(g_e, g_r))
    tau = max(-1.0, min(1.0, c + offset))
    d_e, _, res = applied_update(E, R, make_step(E, R, GradProm(tau)), x_lq, x_hq, y)
    opened = c > tau
    assert res.gate_open == (1.0 if opened else 0.0)
    torch.testing.assert_close(d_e, g_e + g_r if opened else g_e, atol=1e-5, rtol=1e-4)


def test_batched_and_sequential_vjp_give_the_same_step(device):
    out = []
    for vjp in ("sequential", "batched"):
        E, R, x_lq, x_hq, y = tiny(device=device, seed=5)
        d_e, d_r, res = applied_update(E, R, make_step(E, R, GradProm(0.0, "layer"), vjp=vjp), x_lq, x_hq, y)
        out.append((d_e, res.layer_open))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=1e-4)
    assert out[0][1] == out[1][1]


def test_reducer_sees_one_fused_buffer_before_the_gate(device):
    """The reducer is called once per step with [g_e, g_r, g_R, losses]; what it returns is what the gate
    and the optimizers use (here: averaging with a worker whose gradients are all zero)."""
    E, R, x_lq, x_hq, y = tiny(device=device, seed=7)
    g_e, g_r, g_R = reference_gradients(E, R, x_lq, x_hq, y)
    calls = []

    def halve(buf):
        calls.append(buf.numel())
        return buf * 0.5

    d_e, d_r, res = applied_update(E, R, make_step(E, R, Joint(), reducer=halve), x_lq, x_hq, y)
    assert calls == [2 * g_e.numel() + g_R.numel() + 2]
    torch.testing.assert_close(d_e, 0.5 * (g_e + g_r), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(d_r, 0.5 * g_R, atol=1e-5, rtol=1e-4)


def _count_upstream_passes(E):
    """Count gradient passes arriving at E's output (each VJP through E is one)."""
    counter = {"n": 0}

    def fwd_hook(module, inp, out):
        if out.requires_grad:
            out.register_hook(lambda g: counter.__setitem__("n", counter["n"] + 1))

    E.register_forward_hook(fwd_hook)
    return counter


@pytest.mark.parametrize("gate_space,vjp,passes", [("parameter", "sequential", 2), ("parameter", "batched", 1),
                                                    ("output", "sequential", 1)])
def test_number_of_passes_through_the_enhancer(gate_space, vjp, passes, device):
    E, R, x_lq, x_hq, y = tiny(device=device)
    counter = _count_upstream_passes(E)
    make_step(E, R, GradProm(0.0), gate_space=gate_space, vjp=vjp)(x_lq, x_hq, y)
    assert counter["n"] == passes


@pytest.mark.parametrize("tau", [-1.0, 1.0])
def test_output_space_gate_is_one_vjp_of_the_gated_upstream_sum(tau, device):
    """Open (tau=-1): the update equals joint's; closed (tau=1): enhance_only's."""
    E, R, x_lq, x_hq, y = tiny(device=device, seed=2)
    g_e, g_r, _ = reference_gradients(E, R, x_lq, x_hq, y)
    d_e, _, res = applied_update(E, R, make_step(E, R, GradProm(tau), gate_space="output"), x_lq, x_hq, y)
    torch.testing.assert_close(d_e, g_e + g_r if tau < 0 else g_e, atol=1e-5, rtol=1e-4)
    assert res.gate_open == (1.0 if tau < 0 else 0.0)


def test_recognizer_modes(device):
    # frozen: R is not updated at all
    E, R, x_lq, x_hq, y = tiny(device=device)
    step = TrainStep(E, R, torch.optim.SGD(E.parameters(), lr=1.0), None, GradProm(0.0), recognizer_mode="frozen")
    r0 = flat_params(R)
    step(x_lq, x_hq, y)
    assert torch.equal(r0, flat_params(R))
    # clean: R learns from the clean images
    E, R, x_lq, x_hq, y = tiny(device=device, norm="instance")
    R_ref = copy.deepcopy(R)
    torch.nn.functional.cross_entropy(R_ref(x_hq), y).backward()
    g_R_clean = torch.cat([p.grad.reshape(-1) for p in R_ref.parameters()])
    _, d_r, _ = applied_update(E, R, make_step(E, R, GradProm(0.0), recognizer_mode="clean"), x_lq, x_hq, y)
    torch.testing.assert_close(d_r, g_R_clean, atol=1e-5, rtol=1e-4)


def test_super_resolution_step_runs(device):
    E, R, x_lq, x_hq, y = tiny(device=device, scale=2)
    assert x_lq.shape[-1] * 2 == x_hq.shape[-1]
    g_e, g_r, _ = reference_gradients(E, R, x_lq, x_hq, y)
    d_e, _, _ = applied_update(E, R, make_step(E, R, Joint()), x_lq, x_hq, y)
    torch.testing.assert_close(d_e, g_e + g_r, atol=1e-5, rtol=1e-4)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(device):
    E, R, x_lq, x_hq, y = tiny(device=device)
    step = make_step(E, R, GradProm(0.0), max_nonfinite_streak=3)
    bad = x_lq.clone()
    bad[0, 0, 0, 0] = float("nan")
    e0 = flat_params(E)
    res = step(bad, x_hq, y)
    assert res.skipped and res.nonfinite in ("loss_e", "g_e")
    assert math.isnan(res.cos)
    assert torch.equal(e0, flat_params(E)), "a skipped step must not move the weights"
    assert step.nonfinite_total == 1
    ok = step(x_lq, x_hq, y)  # a good step resets the streak
    assert not ok.skipped and step.nonfinite_streak == 0
    step(bad, x_hq, y)
    step(bad, x_hq, y)
    with pytest.raises(TrainingError, match=r"step 5: 3 steps in a row.*learning rate"):
        step(bad, x_hq, y)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 1000), tau=st.floats(0.0, 0.9), lam=st.floats(0.01, 10.0),
       layer=st.booleans(), task=st.sampled_from(["classification", "segmentation"]))
def test_descent_guarantee_on_random_models_and_batches(seed, tau, lam, layer, task):
    E, R, x_lq, x_hq, y = tiny(task, seed=seed)
    g_e, _, _ = reference_gradients(E, R, x_lq, x_hq, y, lambda_r=lam, task=task)
    step = make_step(E, R, GradProm(tau, "layer" if layer else "global"), lambda_r=lam, task=task)
    d_e, _, _ = applied_update(E, R, step, x_lq, x_hq, y)
    ge = g_e.double()
    assert float(d_e.double() @ ge) >= float(ge @ ge) * (1 - 1e-3)


def test_torchjd_strategy_in_the_step(device):
    E, R, x_lq, x_hq, y = tiny(device=device)
    g_e, g_r, _ = reference_gradients(E, R, x_lq, x_hq, y)
    s = make_strategy("torchjd:UPGrad")
    d_e, _, res = applied_update(E, R, make_step(E, R, s), x_lq, x_hq, y)
    expected = make_strategy("torchjd:UPGrad")(g_e, g_r).update
    torch.testing.assert_close(d_e, expected, atol=1e-5, rtol=1e-3)
    assert math.isnan(res.gate_open)
