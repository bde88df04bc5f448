"""Simulation end to end: 3 hospitals x 2 rounds through the real `gradprom federate` command (Flower on a
private Ray instance), shared by the checks below; then the server gate on one site."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from gradprom.federated.config import build_federation
from gradprom.federated.partition import load_dataset, load_site
from gradprom.federated.server_gate import apply_to_weights, gate_aggregate
from gradprom.federated.task import enhancer_flat, get_arrays, new_models, train_site
from gradprom.platform.checkpoint import load_checkpoint
from gradprom.platform.rundir import RunDir
from gradprom.platform.strategies import cosine

from ._fed import run_cli, tiny

pytestmark = pytest.mark.slow
SITES = ["hospital-0", "hospital-1", "hospital-2"]


def _federate(tmp, name: str, **federated):
    cfg_path = tmp / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(tmp / "runs", name, **federated)))
    rc, out = run_cli(["federate", "--config", str(cfg_path)], tmp, name)
    assert rc == 0, out[-3000:]
    return RunDir(tmp / "runs" / name), out


@pytest.fixture(scope="module")
def fed3(tmp_path_factory):
    """3 hospitals (noise 0.02 / 0.16 / 0.3), 2 rounds, FedAvg; hospital-2 has tau = 1; updates kept."""
    tmp = tmp_path_factory.mktemp("fed3")
    return _federate(tmp, "fed3", hospitals=3, rounds=2, noise_min=0.02, noise_max=0.3,
                     sites={2: {"tau": 1.0}}, record_updates=True)


def _rounds(run: RunDir) -> list[dict]:
    return pq.read_table(run.path / "rounds.parquet").to_pylist()


def _replay_setup(run: RunDir):
    torch.set_num_threads(1)  # as in the ClientApps, so the replay is bit-for-bit
    cfg, fed = build_federation(yaml.safe_load(run.config_yaml.read_text()))
    _, info = load_dataset(cfg)
    return cfg, fed, info, get_arrays(new_models(cfg, info))


def test_three_hospitals_two_rounds_rounds_table(fed3):
    run, out = fed3
    rows = _rounds(run)
    assert [(r["round"], r["site"]) for r in rows] == [(n, s) for n in (1, 2) for s in [*SITES, "global"]]
    assert all(r["status"] == "ok" and r["error"] is None for r in rows)
    sites = {r["site"]: r for r in pq.read_table(run.path / "sites.parquet").to_pylist()}
    assert [sites[s]["degradation"] for s in SITES] == ["gaussian:sigma=0.02", "gaussian:sigma=0.16",
                                                        "gaussian:sigma=0.3"]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("psnr", "ssim", "accuracy", "loss_e", "loss_r", "time"))
        if r["site"] == "global":
            assert r["num_examples"] == sum(sites[s]["num_train"] for s in SITES)
            assert r["gate_open_rate"] is None and r["mean_cos"] is None and r["server_gate_open"] is None
        else:
            assert r["num_examples"] == sites[r["site"]]["num_train"]
            assert all(r[k] is not None and math.isfinite(r[k]) for k in
                       ("gate_open_rate", "mean_cos", "norm_ge", "norm_gr", "eval_psnr"))
    # per-site gate statistics differ between sites with different noise
    for n in (1, 2):
        site_rows = [r for r in rows if r["round"] == n and r["site"] != "global"]
        assert len({round(r["mean_cos"], 6) for r in site_rows}) == 3
        assert len({round(r["norm_ge"], 6) for r in site_rows}) == 3
    info = run.read_run()
    assert (info["kind"], info["status"], info["hospitals"], info["rounds"], info["fl_strategy"],
            info["gate_level"]) == ("federated", "finished", 3, 2, "fedavg", "local")
    epochs = run.read_epochs()
    assert [(r["epoch"], r["split"]) for r in epochs] == [(1, "val"), (2, "val"), (2, "test")]
    assert load_checkpoint(run.latest_checkpoint())["round"] == 2
    assert "round 2/2: 3 sites ok" in out and "federation finished" in out


def test_fedavg_is_the_sample_weighted_mean_of_the_returned_weights(fed3):
    run, _ = fed3
    replies = [load_checkpoint_updates(run.path / "updates" / "round-2" / f"{s}.pt") for s in SITES]
    n = np.array([r["num_examples"] for r in replies], dtype=np.float64)
    assert list(n) == [r["num_examples"] for r in _rounds(run) if r["round"] == 2 and r["site"] != "global"]
    state = load_checkpoint(run.latest_checkpoint())
    checked = 0
    for model in ("enhancer", "recognizer"):
        for key, got in state[model].items():
            if not got.is_floating_point():
                continue
            mean = sum(w * r["arrays"][f"{model}.{key}"].double() for w, r in zip(n / n.sum(), replies))
            assert torch.allclose(got.double(), mean, rtol=1e-5, atol=1e-6), key
            checked += 1
    assert checked > 20
    # and the sites really differed (otherwise any mean would pass)
    first = next(k for k in replies[0]["arrays"] if k.startswith("enhancer.") and k.endswith("weight"))
    a, b = (r["arrays"][first] for r in replies[:2])
    assert not torch.allclose(a, b)


def load_checkpoint_updates(path):
    """A site's recorded reply (updates/round-<r>/<site>.pt), loaded with weights_only=True."""
    return torch.load(path, weights_only=True)


def test_local_gate_with_tau_1_never_opens_and_equals_enhance_only(fed3):
    run, _ = fed3
    rows = [r for r in _rounds(run) if r["site"] == "hospital-2"]
    assert [r["gate_open_rate"] for r in rows] == [0.0, 0.0]
    cfg, fed, info, start = _replay_setup(run)
    site = load_site(cfg, fed, 2)
    got = load_checkpoint_updates(run.path / "updates" / "round-1" / "hospital-2.pt")["arrays"]
    for strategy, same in (("enhance_only", True), ("joint", False)):
        fed_s = fed.model_copy(update={"sites": {2: fed.sites[2].model_copy(update={"strategy": strategy})}})
        res = train_site(cfg, fed_s, info, site, start, server_round=1)
        equal = all(torch.allclose(got[k].double(), torch.as_tensor(v).double(), rtol=0, atol=1e-6)
                    for k, v in res.arrays.items() if k.startswith("enhancer."))
        assert equal == same, strategy


def test_server_gate_with_one_site_is_the_local_rule_on_its_accumulated_update(tmp_path):
    run, out = _federate(tmp_path, "server1", hospitals=1, rounds=1, gate_level="server", record_updates=True,
                         noise_min=0.1, noise_max=0.1)
    (row,) = [r for r in _rounds(run) if r["site"] == "global"]
    cfg, fed, info, start = _replay_setup(run)
    replay = train_site(cfg, fed, info, load_site(cfg, fed, 0), start, server_round=1)
    sent = load_checkpoint_updates(run.path / "updates" / "round-1" / "hospital-0.pt")["arrays"]
    a_e, a_r = sent["gate.sum_ge"], sent["gate.sum_gr"]
    assert torch.allclose(a_e, torch.as_tensor(replay.sum_ge), atol=1e-6)
    c = float(cosine(a_e, a_r))
    assert row["server_cos"] == pytest.approx(c, abs=1e-6)
    assert row["server_gate_open"] == float(c > cfg.gradprom.tau)
    # the global enhancer is the site's enhancer plus the admitted task part of GradProm(A_e, A_r)
    models = new_models(cfg, info)
    site_arrays = {k: v.numpy() for k, v in sent.items() if not k.startswith("gate.")}
    expect = apply_to_weights(enhancer_flat(start, models), enhancer_flat(site_arrays, models),
                              gate_aggregate(a_e, a_r, cfg.gradprom.tau))
    state = load_checkpoint(run.latest_checkpoint())
    got = torch.cat([state["enhancer"][n].reshape(-1).float() for n, p in models.enhancer.named_parameters()])
    assert torch.allclose(got, expect, atol=1e-6)
    assert "server gate" in out
