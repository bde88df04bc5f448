"""Secure aggregation (`federated.secure_aggregation: secagg+`) with Flower's real SecAgg+ workflow and mod, in a
real Flower simulation (`gradprom federate`'s runtime: the ServerApp in Flower's simulation process, ClientApps
in Ray actors).

Two hooks belong to this test, not to the product (_spy_app.py, the apps these runs use): each site's own record
of the vector it handed to the masking (a train mod innermost in the site's own mod chain, written from inside
the Ray actor), and a spy on what reaches the server gate and the strategy's aggregate_fit on the server
(wrappers that record, then call the real code).

Quantisation tolerance, per entry (secagg.py explains where it comes from): with N sites, site weights n_k,
clipping range c, Q levels and max weight W, Flower's mod weighs site k by dq_k = round(n_k Q / W) / Q and rounds
stochastically to steps of 2c/Q, the server divides the unmasked sum by Σ dq_k, so

    |secure mean − Σ n_k v_k / Σ n_k| ≤ (N · 2c/Q + Σ_k |dq_k − n_k/W| · |v_k − v̄|) / Σ_k dq_k

and the global model, stored as float32, adds at most 2^-23 of its own size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gradprom.federated.config import build_federation
from gradprom.federated.secagg_site import check_maskable
from gradprom.federated.simulation import simulate
from gradprom.platform.checkpoint import load_checkpoint
from gradprom.platform.errors import ConfigError
from gradprom.platform.rundir import RunDir

from ._fed import tiny
from ._spy_app import SPY_ENV

SITES = ("hospital-0", "hospital-1")
REPO = Path(__file__).resolve().parents[2]  # where the simulation process imports tests.federated._spy_app from


def _federate(tmp: Path, name: str, rounds: int = 1, resume: bool = False, hospitals: int = 2, **federated) -> dict:
    """One real simulation with the test's apps (_spy_app.py); returns the run, the sites' records of its last
    round (of the sites that got as far as handing a vector over) and what the server saw."""
    # a short round timeout: if Ray's runtime dies under load, the ServerApp gives up in minutes
    raw = tiny(tmp / "runs", name, hospitals=hospitals, rounds=rounds, round_timeout_s=180.0, **federated)
    spy = tmp / f"{name}-spy-{'resume' if resume else 'first'}"
    spy.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SPY_ENV, str(spy))  # the simulation's processes inherit this process's environment
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        path = simulate(raw, tmp / "runs" / name, resume=resume,
                        apps=("tests.federated._spy_app:server", "tests.federated._spy_app:client"))
    records = spy / "sites"
    sites = [torch.load(records / f"round-{rounds}-site-{k}.pt", weights_only=True) for k in range(hospitals)
             if (records / f"round-{rounds}-site-{k}.pt").is_file()]
    for s in sites:
        s["vector"] = [t.numpy().astype(np.float64) for t in s["vector"]]
        s["start"] = {key: t.numpy() for key, t in s["start"].items()}
    calls = sorted(spy.glob("*-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    gate_calls = [torch.load(p, weights_only=True) for p in calls if p.name.startswith("gate-")]
    for g in gate_calls:
        g["pairs"] = [(a.numpy(), b.numpy()) for a, b in g["pairs"]]
    fit_calls = [[[t.numpy() for t in reply] for reply in torch.load(p, weights_only=True)["replies"]]
                 for p in calls if p.name.startswith("fit-")]
    _, fed = build_federation(raw)
    return {"run": RunDir(path), "fed": fed, "sites": sites, "gate_calls": gate_calls, "fit_calls": fit_calls}


# one module-scoped fixture per federation (2 sites, 1 round unless said), so each test starts only what it reads
@pytest.fixture(scope="module")
def tmp_secagg(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("secagg")


@pytest.fixture(scope="module")
def local_run(tmp_secagg):
    """SecAgg+ with local gating and Flower's default SecAgg+ settings; round 1's global model kept aside."""
    run = _federate(tmp_secagg, "secure-local", secure_aggregation="secagg+")
    run["global_1"] = load_checkpoint(run["run"].latest_checkpoint())
    return run


@pytest.fixture(scope="module")
def resumed_run(tmp_secagg, local_run):
    """The same federation resumed for a second round, in the same run directory."""
    return _federate(tmp_secagg, "secure-local", rounds=2, resume=True, secure_aggregation="secagg+")


@pytest.fixture(scope="module")
def server_run(tmp_secagg):
    """SecAgg+ with the server gate (max weight 64: finer weights)."""
    return _federate(tmp_secagg, "secure-server", secure_aggregation="secagg+", gate_level="server",
                     secagg_max_weight=64.0)


@pytest.fixture(scope="module")
def plain_server_run(tmp_secagg):
    """The control: the server gate without SecAgg+."""
    return _federate(tmp_secagg, "plain-server", gate_level="server")


@pytest.fixture(scope="module")
def dropout_run(tmp_secagg):
    """3 sites under SecAgg+; hospital-2 crashes in round 1 after the key setup."""
    return _federate(tmp_secagg, "secure-dropout", hospitals=3, secure_aggregation="secagg+",
                     faults=[{"site": 2, "round": 1, "kind": "crash"}])


def _flat(checkpoint: dict) -> dict[str, np.ndarray]:
    """A checkpoint's E and R as the federation's flat array dict."""
    return {f"{part}.{key}": v.numpy() for part in ("enhancer", "recognizer") for key, v in checkpoint[part].items()}


# -------------------------------------------------------------------------------------------------------
# the bound and the checks
def weighted_mean(vectors: list[np.ndarray], ns: list[int]) -> np.ndarray:
    """FedAvg's mean: Σ n_k v_k / Σ n_k."""
    return sum(n * v for n, v in zip(ns, vectors)) / sum(ns)


def secagg_tolerance(vectors: list[np.ndarray], ns: list[int], fed) -> np.ndarray:
    """The per-entry bound of the module docstring: (N·2c/Q + Σ_k |dq_k − n_k/W|·|v_k − v̄|) / Σ_k dq_k."""
    c, q, w = fed.secagg_clipping_range, fed.secagg_quantization_range, fed.secagg_max_weight
    dq = [round(n / w * q) / q for n in ns]
    mean = weighted_mean(vectors, ns)
    spread = sum(abs(d - n / w) * np.abs(v - mean) for d, n, v in zip(dq, ns, vectors))
    return (len(ns) * 2 * c / q + spread) / sum(dq)


def assert_only_the_secure_mean(seen: list[np.ndarray], sites: list[dict], index: int, fed) -> None:
    """`seen` (what reached server-side code) are each the weighted mean of the sites' vector `index` within the
    quantisation bound, and none of them is a site's own vector: most of its entries lie outside that bound."""
    ns = [s["n"] for s in sites]
    own = [s["vector"][index] for s in sites]
    mean, tol = weighted_mean(own, ns), secagg_tolerance(own, ns, fed)
    assert seen, "nothing reached the server-side code"
    for got in seen:
        got = np.asarray(got, np.float64).reshape(mean.shape)
        assert np.all(np.abs(got - mean) <= tol), f"max excess {np.max(np.abs(got - mean) - tol):.3g}"
        for k, v in enumerate(own):
            far = float(np.mean(np.abs(got - v) > tol))
            assert far > 0.5, f"what reached the server equals {SITES[k]}'s own vector ({far:.0%} of entries apart)"


def assert_global_is_fedavg(got: dict[str, np.ndarray], sites: list[dict], fed) -> None:
    """The global model equals FedAvg of the sites' new weights (start + their update) within the quantisation
    bound, and the error is of the order of SecAgg+'s quantum (it really went through the protocol)."""
    start = sites[0]["start"]
    ns = [s["n"] for s in sites]
    assert list(got) == list(start) and len(sites[0]["vector"]) == len(start)  # updates only: no gate pair
    worst = 0.0
    for i, (key, s) in enumerate(start.items()):
        # FedAvg of the sites' new weights w_k = start + v_k, in float64
        new = [np.asarray(s, np.float64) + site["vector"][i].reshape(s.shape) for site in sites]
        fedavg = weighted_mean(new, ns)
        if s.dtype.kind != "f":  # integer buffers (BatchNorm's step counter): the same count on every site
            assert np.array_equal(got[key], np.rint(fedavg).astype(s.dtype)), key
            continue
        tol = secagg_tolerance([site["vector"][i].reshape(s.shape) for site in sites], ns, fed)
        tol = tol + 2.0**-23 * np.abs(fedavg)  # the global model is stored as float32
        err = np.abs(got[key].astype(np.float64) - fedavg)
        assert np.all(err <= tol), (key, float(np.max(err - tol)))
        worst = max(worst, float(np.max(err)))
    q = fed.secagg_quantization_range
    quantum = 2 * fed.secagg_clipping_range / q / sum(round(n / fed.secagg_max_weight * q) / q for n in ns)
    assert quantum / 10 < worst <= len(ns) * quantum + 1e-6


# -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_with_local_gating_the_secure_aggregate_is_fedavg_within_the_quantisation_bound(local_run):
    r = local_run
    run, fed, sites = r["run"], r["fed"], r["sites"]
    assert run.read_run()["status"] == "finished"
    start = sites[0]["start"]
    assert all(np.array_equal(sites[1]["start"][key], v) for key, v in start.items())  # one global model sent
    assert_global_is_fedavg(_flat(r["global_1"]), sites, fed)


@pytest.mark.slow
def test_a_site_lost_after_the_key_setup_is_unmasked_and_the_others_are_averaged(dropout_run):
    r = dropout_run
    run, sites = r["run"], r["sites"]
    assert run.read_run()["status"] == "finished"
    rows = pq.read_table(run.path / "rounds.parquet").to_pylist()
    assert [(x["site"], x["status"]) for x in rows] == [("hospital-0", "ok"), ("hospital-1", "ok"),
                                                        ("hospital-2", "failed"), ("global", "ok")]
    assert "injected crash" in rows[2]["error"]
    assert len(sites) == 2 and rows[3]["num_examples"] == sum(s["n"] for s in sites)
    # Flower removed the lost site's pairwise masks from its neighbours' shares: the mean of the other two
    assert_global_is_fedavg(_flat(load_checkpoint(run.latest_checkpoint())), sites, r["fed"])


@pytest.mark.slow
def test_a_secure_federation_resumes_from_its_checkpoint_in_the_same_run_directory(local_run, resumed_run):
    r = resumed_run
    run = r["run"]
    info = run.read_run()
    assert (info["status"], info["rounds"], info["secure_aggregation"]) == ("finished", 2, "secagg+")
    rows = pq.read_table(run.path / "rounds.parquet").to_pylist()
    assert [(x["round"], x["site"], x["status"]) for x in rows] == [
        (n, s, "ok") for n in (1, 2) for s in (*SITES, "global")]
    assert load_checkpoint(run.latest_checkpoint())["round"] == 2
    # round 2 started from round 1's checkpointed global model, on both sites
    global_1 = _flat(local_run["global_1"])
    for site in r["sites"]:
        assert all(np.array_equal(site["start"][key], v) for key, v in global_1.items())
    assert [x["epoch"] for x in run.read_epochs() if x["split"] == "val"] == [1, 2]


@pytest.mark.slow
def test_with_the_server_gate_the_server_sees_only_the_secure_means_of_the_sites_vectors(server_run):
    r = server_run
    run, fed, sites = r["run"], r["fed"], r["sites"]
    info = run.read_run()
    assert (info["status"], info["secure_aggregation"], info["gate_level"]) == ("finished", "secagg+", "server")
    n_model = len(sites[0]["start"])
    assert all(len(s["vector"]) == n_model + 2 for s in sites)  # the update, then A_e and A_r
    # what reaches the strategy: every FitRes carries the same secure mean of the sites' whole vectors
    (fit,) = r["fit_calls"]
    assert len(fit) == 2 and all(len(p) == n_model + 2 for p in fit)
    for i in (0, 5, n_model - 1, n_model, n_model + 1):
        assert_only_the_secure_mean([p[i] for p in fit], sites, i, fed)
    # what reaches the server gate: one pair, the secure weighted means of the sites' (A_e, A_r), never a site's
    (call,) = r["gate_calls"]
    assert len(call["pairs"]) == 1 and call["weights"] == [1.0]
    ge, gr = call["pairs"][0]
    assert_only_the_secure_mean([ge], sites, n_model, fed)
    assert_only_the_secure_mean([gr], sites, n_model + 1, fed)
    rows = pq.read_table(run.path / "rounds.parquet").to_pylist()
    assert [(x["site"], x["status"]) for x in rows] == [(SITES[0], "ok"), (SITES[1], "ok"), ("global", "ok")]
    # metrics travel in the clear: the site rows have their own losses and sizes
    assert [x["num_examples"] for x in rows[:2]] == [s["n"] for s in sites]
    assert all(x["loss_e"] is not None and not math.isnan(x["loss_e"]) for x in rows[:2])
    assert rows[2]["server_gate_open"] in (0.0, 1.0) and rows[2]["server_cos"] is not None


@pytest.mark.slow
def test_the_check_fails_when_a_single_sites_vector_reaches_the_server_gate(plain_server_run):
    # without SecAgg+ the server gate receives each site's own (A_e, A_r): the same check must catch it
    r = plain_server_run
    fed = build_federation({"federated": {"hospitals": 2, "secure_aggregation": "secagg+",
                                          "secagg_max_weight": 64.0}})[1]  # the bound SecAgg+ would have had
    (call,) = r["gate_calls"]
    assert len(call["pairs"]) == 2
    n_model = len(r["sites"][0]["start"])
    with pytest.raises(AssertionError, match="own vector|max excess"):
        assert_only_the_secure_mean([call["pairs"][0][0]], r["sites"], n_model, fed)
    assert r["fit_calls"] == []  # the plain run never touched the SecAgg+ strategy


# -------------------------------------------------------------------------------------------------------
# fast: the rules around SecAgg+
@pytest.mark.parametrize("extra, match", [
    ({"dp": "server-fixed"}, "federated.dp: server-fixed. cannot be combined.*Set one of the two to none"),
    ({"dp": "client-fixed"}, "federated.secure_aggregation: secagg\\+. and .federated.dp: client-fixed"),
    ({"hospitals": 1, "min_answers": 1}, "at least 2 sampled sites"),
    ({"record_updates": True}, "record_updates"),
    ({"secagg_quantization_range": 2**31}, "2\\*\\*32"),
])
def test_secagg_config_rules(extra, match):
    with pytest.raises(ConfigError, match=match):
        build_federation({"federated": {"hospitals": 2, "secure_aggregation": "secagg+", **extra}})
    _, fed = build_federation({"federated": {"hospitals": 2, "secure_aggregation": "secagg+"}})
    assert (fed.secagg_clipping_range, fed.secagg_quantization_range, fed.secagg_max_weight) == (8.0, 2**22, 1000.0)


def test_a_site_refuses_a_vector_secagg_would_clip_overflow_or_scramble():
    _, fed = build_federation({"federated": {"hospitals": 2, "secure_aggregation": "secagg+",
                                             "secagg_clipping_range": 1.0, "secagg_max_weight": 100.0}})
    ok = [np.full(3, 1.9)]  # weighted by 50/100: 0.95, inside [-1, 1]
    check_maskable(ok, 50, fed, "hospital-0")
    with pytest.raises(ValueError, match="secagg_clipping_range"):
        check_maskable([np.full(3, 2.1)], 50, fed, "hospital-0")
    with pytest.raises(ValueError, match="secagg_max_weight"):
        check_maskable(ok, 101, fed, "hospital-0")
    with pytest.raises(ValueError, match="non-finite"):
        check_maskable([np.array([0.0, np.nan])], 50, fed, "hospital-0")


def test_dashboard_summary_names_secure_aggregation():
    from gradprom.dashboard.views.federation import privacy_text

    info = {"dp": "none", "secure_aggregation": "secagg+", "secagg_clipping_range": 8.0,
            "secagg_quantization_range": 4194304, "secagg_max_weight": 1000.0}
    assert privacy_text(info) == ("SecAgg+ (the server sees only the sites' weighted mean; clipping range 8, "
                                  "4194304 levels, max weight 1000), no DP")
    assert privacy_text({"dp": "none", "secure_aggregation": "none"}) == "no DP"
