"""The server-level gate (a pure rule on the aggregated pair) and the local step's pieces, in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradprom.federated.config import build_federation
from gradprom.federated.partition import load_dataset, load_site
from gradprom.federated.server_gate import apply_to_weights, gate_aggregate, weighted_pair
from gradprom.federated.task import enhancer_flat, get_arrays, new_models, train_site
from gradprom.platform.strategies import GradProm, cosine

from ._fed import TINY


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _site_pair(k: int, **federated):
    cfg, fed = build_federation({**TINY, "federated": {"hospitals": 2, "local_steps": 3, "gate_level": "server",
                                                       **federated}})
    _, info = load_dataset(cfg)
    start = get_arrays(new_models(cfg, info))
    res = train_site(cfg, fed, info, load_site(cfg, fed, k), start, server_round=1)
    return cfg, info, start, res


def test_one_site_reduces_to_the_local_rule_on_its_accumulated_update():
    cfg, _, _, res = _site_pair(0)
    a_e, a_r = torch.as_tensor(res.sum_ge), torch.as_tensor(res.sum_gr)
    for tau in (-0.99, 0.0, float(cosine(a_e, a_r)) - 1e-3, 0.99):
        mean_ge, mean_gr = weighted_pair([(res.sum_ge, res.sum_gr)], [res.metrics["num-examples"]])
        gate = gate_aggregate(mean_ge, mean_gr, tau)
        local = GradProm(tau=tau)(a_e, a_r)
        assert float(gate.decision.gate_open) == float(local.gate_open)
        assert torch.allclose(gate.decision.update, local.update, rtol=1e-6, atol=1e-9)
    # the site trained E on enhancement alone under server gating
    assert res.metrics["gate_open_rate"] == 0.0


def test_two_sites_with_opposed_task_directions_close_the_server_gate():
    _, _, _, res = _site_pair(0)
    a_e, a_r = res.sum_ge, res.sum_gr
    c = float(cosine(torch.as_tensor(a_e), torch.as_tensor(a_r)))
    a_r = a_r if c > 0 else -a_r  # site A: a real pair whose task part agrees with its enhancement part
    # both sites agree on enhancement; their task gradients point opposite ways (B's twice as strongly)
    tau = abs(c) - 0.05
    alone = gate_aggregate(*weighted_pair([(a_e, a_r)], [1.0]), tau)
    both = gate_aggregate(*weighted_pair([(a_e, a_r), (a_e, -2.0 * a_r)], [1.0, 1.0]), tau)
    assert float(alone.decision.gate_open) == 1.0
    assert float(both.decision.gate_open) == 0.0 and float(both.decision.cos) < 0
    assert torch.count_nonzero(both.task_part) == 0
    # equal task directions keep it open; the weights decide the mean
    same = gate_aggregate(*weighted_pair([(a_e, a_r), (a_e, 0.5 * a_r)], [3.0, 1.0]), tau)
    assert float(same.decision.gate_open) == 1.0
    assert torch.allclose(same.mean_gr, torch.as_tensor(0.875 * a_r, dtype=torch.float32), rtol=1e-5)


def test_open_gate_moves_the_enhancer_along_the_task_part_scaled_to_weight_space():
    cfg, info, start, res = _site_pair(0)
    models = new_models(cfg, info)
    mean_ge, mean_gr = weighted_pair([(res.sum_ge, res.sum_gr)], [1.0])
    s0, avg = enhancer_flat(start, models), enhancer_flat(res.arrays, models)
    opened = gate_aggregate(mean_ge, mean_gr, -1.0 + 1e-6)  # cos > -1: open
    closed = gate_aggregate(mean_ge, mean_gr, 1.0)
    assert torch.equal(apply_to_weights(s0, avg, closed), avg)
    moved = avg - apply_to_weights(s0, avg, opened)
    scale = torch.linalg.vector_norm(s0 - avg) / torch.linalg.vector_norm(mean_ge)
    assert torch.allclose(moved, scale * mean_gr, rtol=1e-3, atol=1e-6)  # float32 weights


def test_fedprox_term_pulls_the_local_weights_toward_the_global_model():
    cfg, fed = build_federation({**TINY, "federated": {"hospitals": 2, "local_steps": 3}})
    _, info = load_dataset(cfg)
    start = get_arrays(new_models(cfg, info))
    site = load_site(cfg, fed, 1)
    dist = {}
    for mu in (0.0, 50.0):
        res = train_site(cfg, fed, info, site, start, server_round=1, proximal_mu=mu)
        dist[mu] = sum(float(np.abs(res.arrays[k] - start[k]).sum()) for k in start if start[k].dtype.kind == "f")
    assert dist[50.0] < dist[0.0]
