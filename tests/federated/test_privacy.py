"""Differential privacy, in-process with Flower's real DP wrappers and client mod around the recorded strategy,
and the config rules of issue 19 (explicit degradation turns the noise ramp off; DP needs instance norm)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from gradprom.federated.client_app import clip_when_asked_mod
from gradprom.federated.config import build_federation
from gradprom.federated.driver import small_site_warnings
from gradprom.federated.partition import site_degradation
from gradprom.federated.privacy import DP_WEIGHT, after_release, as_float, private_pair
from gradprom.federated.records import RoundsRecorder
from gradprom.federated.strategy import SITE_RECORD, build_strategy, from_record, to_record
from gradprom.platform.errors import ConfigError
from gradprom.platform.rundir import RunDir

N = 4000  # entries of the toy model: enough for the noise's std to be measured to a few percent


@pytest.fixture(autouse=True)
def _task_identity():
    # what run_simulation sets before a ServerApp builds messages outside a SuperLink
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


class ThreeNodes(Grid):
    """Only what a strategy's configure_train asks of the network: which nodes are connected."""

    def get_node_ids(self):
        return [100, 101, 102]

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, *args, **kwargs):
        raise NotImplementedError


def _replies(instructions: list[Message], start: dict, updates: list[np.ndarray], sizes: list[int]) -> list[Message]:
    out = []
    for k, (instr, u, n) in enumerate(zip(instructions, updates, sizes)):
        content = {"arrays": to_record({"w": start["w"] + u}),
                   "metrics": MetricRecord({"num-examples": n, DP_WEIGHT: 1.0, "loss_e": 0.1 * k}),
                   SITE_RECORD: ConfigRecord({"site": k})}
        out.append(Message(RecordDict(content), reply_to=instr))
    return out


def _aggregate(tmp_path, dp: str, noise: float, clip: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=N).astype(np.float32)}
    updates = [rng.normal(size=N).astype(np.float32) * s for s in (0.001, 0.05, 3.0)]  # norms ~0.06, 3, 190
    rec = RoundsRecorder(RunDir(tmp_path / dp), "classification")
    strategy = build_strategy("fedavg", rec, min_nodes=3, hospitals=3, dp=dp, dp_clipping_norm=clip,
                              dp_noise_multiplier=noise)
    instructions = sorted(strategy.configure_train(1, to_record(start), ConfigRecord({}), ThreeNodes()),
                          key=lambda m: m.metadata.dst_node_id)
    np.random.seed(seed)  # Flower draws its noise from numpy's global generator
    arrays, _ = strategy.aggregate_train(1, _replies(instructions, start, updates, [10, 20, 70]))
    return start, updates, from_record(arrays)["w"], rec, strategy


def test_server_fixed_clipping_bounds_each_update_and_weighs_sites_equally(tmp_path):
    start, updates, got, rec, _ = _aggregate(tmp_path, "server-fixed", noise=0.0, clip=1.0)
    clipped = [u * min(1.0, 1.0 / np.linalg.norm(u)) for u in updates]
    expect = start["w"] + sum(clipped) / 3  # a plain mean, although the sites hold 10, 20 and 70 images
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-5)
    assert np.linalg.norm(got - start["w"]) <= 1.0 + 1e-5
    unclipped = start["w"] + sum(updates) / 3
    assert np.linalg.norm(unclipped - start["w"]) > 50  # without clipping the largest site would dominate
    assert [(r["site"], r["status"], r["num_examples"]) for r in rec.rows] == [
        ("hospital-0", "ok", 10), ("hospital-1", "ok", 20), ("hospital-2", "ok", 70)]


def test_noise_changes_the_aggregate_by_the_gaussian_std_flower_documents(tmp_path):
    _, _, quiet, _, _ = _aggregate(tmp_path, "server-fixed", noise=0.0, clip=0.5)
    _, _, noisy, _, strategy = _aggregate(tmp_path / "n", "server-fixed", noise=1.2, clip=0.5)
    diff = noisy - quiet
    assert not np.allclose(noisy, quiet)
    assert np.std(diff) == pytest.approx(1.2 * 0.5 / 3, rel=0.05)  # noise_multiplier * clipping_norm / sites
    assert abs(np.mean(diff)) < 0.01
    assert strategy.accountant is not None  # fixed clipping + fedavg: Flower's RDP accountant counts the release
    spent = strategy.privacy_spent()
    assert spent.num_releases == 1 and 0 < spent.epsilon < float("inf")


def test_adaptive_clipping_clips_and_updates_its_norm_by_flowers_rule(tmp_path):
    start, updates, got, _, strategy = _aggregate(tmp_path, "adaptive", noise=0.0, clip=0.5)
    clipped = [u * min(1.0, 0.5 / np.linalg.norm(u)) for u in updates]
    np.testing.assert_allclose(got, start["w"] + sum(clipped) / 3, rtol=0, atol=1e-5)
    # Flower 1.42 (serverapp and legacy alike) counts the *clipped* updates (2 of 3 here) in
    # C <- C * exp(-lr * (fraction - target)): the norm shrinks when most updates are clipped
    assert strategy.clipping_norm == pytest.approx(0.5 * np.exp(-0.2 * (2 / 3 - 0.5)), rel=1e-9)
    assert getattr(strategy, "accountant", None) is None  # Flower accounts fixed clipping only


def test_client_fixed_mod_clips_the_reply_only_when_the_server_asks():
    start = {"w": np.zeros(N, np.float32)}
    big = np.full(N, 0.5, np.float32)  # norm ~31.6

    def train(conf: dict):
        instr = Message(RecordDict({"arrays": to_record(start), "config": ConfigRecord(conf)}), dst_node_id=7,
                        message_type="train")

        def call_next(msg, context):
            return Message(RecordDict({"arrays": to_record({"w": big}), "metrics": MetricRecord({"num-examples": 1}),
                                       SITE_RECORD: ConfigRecord({"site": 0})}), reply_to=msg)

        reply = clip_when_asked_mod(instr, None, call_next)
        return from_record(reply.content["arrays"])["w"]

    assert np.linalg.norm(train({"server-round": 1, "clipping_norm": 2.0})) == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_array_equal(train({"server-round": 1}), big)


def test_server_gate_pair_is_clipped_then_noised():
    rng = np.random.default_rng(1)
    pairs = [(rng.normal(size=N) * 3, rng.normal(size=N) * 3) for _ in range(2)]
    np.random.seed(0)
    ge, gr = private_pair(pairs, clipping_norm=1.0, noise_multiplier=0.0, num_sampled=2)
    for a, b in pairs:
        assert np.linalg.norm(np.concatenate([a, b])) > 1.0
    scale = [1.0 / np.linalg.norm(np.concatenate([a, b])) for a, b in pairs]
    np.testing.assert_allclose(ge, (pairs[0][0] * scale[0] + pairs[1][0] * scale[1]) / 2, atol=1e-12)
    noisy_ge, _ = private_pair(pairs, clipping_norm=1.0, noise_multiplier=2.0, num_sampled=2)
    assert np.std(noisy_ge - ge) == pytest.approx(1.0, rel=0.05)


def test_explicit_degradation_switches_the_noise_ramp_off_unless_the_ramp_is_given():
    cfg, fed = build_federation({"data": {"degradation": "lowdose"}, "federated": {"hospitals": 3}})
    assert fed.noise_min is None and [site_degradation(cfg, fed, k) for k in range(3)] == ["lowdose"] * 3
    cfg, fed = build_federation({"data": {"degradation": "lowdose"},
                                 "federated": {"hospitals": 3, "noise_min": 0.1, "noise_max": 0.3}})
    assert [site_degradation(cfg, fed, k) for k in range(3)] == [f"gaussian:sigma={s}" for s in (0.1, 0.2, 0.3)]
    cfg, fed = build_federation({"federated": {"hospitals": 2}})  # no degradation given: the ramp as before
    assert site_degradation(cfg, fed, 1) == "gaussian:sigma=0.2"


def test_dp_config_rules():
    _, fed = build_federation({"federated": {"dp": "server-fixed", "dp_noise_multiplier": 0.3}})
    assert (fed.dp, fed.dp_noise_multiplier, fed.dp_clipping_norm) == ("server-fixed", 0.3, 1.0)
    with pytest.raises(ConfigError, match="client-fixed"):
        build_federation({"federated": {"dp": "client-fixed", "gate_level": "server"}})
    with pytest.raises(ConfigError, match="federated.dp"):
        build_federation({"federated": {"dp": "local"}})


def test_released_aggregate_keeps_batchnorm_variances_usable():
    noisy = {"r.bn.running_var": np.array([-0.2, 0.5], np.float32), "r.bn.weight": np.array([-0.2], np.float32),
             "r.bn.num_batches_tracked": np.array(3, np.int64)}
    sent = as_float(noisy)
    assert sent["r.bn.num_batches_tracked"].dtype == np.float32  # Flower's in-place clipping needs floats
    out = after_release(sent)
    np.testing.assert_array_equal(out["r.bn.running_var"], [0.0, 0.5])
    np.testing.assert_array_equal(out["r.bn.weight"], noisy["r.bn.weight"])  # weights may be negative: untouched


def test_small_site_warning_names_the_site_and_the_batch():
    rows = [{"site": "hospital-0", "num_train": 40, "error": None}, {"site": "hospital-1", "num_train": 5,
                                                                     "error": None}]
    (w,) = small_site_warnings(rows, batch_size=8)
    assert "hospital-1 has 5 training images" in w and "data.batch_size = 8" in w


def test_under_accounted_dp_a_failed_site_means_no_release_and_the_model_is_kept(tmp_path):
    from flwr.app import Error

    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=N).astype(np.float32)}
    rec = RoundsRecorder(RunDir(tmp_path), "classification")
    strategy = build_strategy("fedavg", rec, min_nodes=3, hospitals=3, dp="server-fixed", dp_clipping_norm=1.0,
                              dp_noise_multiplier=1.0)
    instructions = sorted(strategy.configure_train(1, to_record(start), ConfigRecord({}), ThreeNodes()),
                          key=lambda m: m.metadata.dst_node_id)
    replies = _replies(instructions[:2], start, [rng.normal(size=N).astype(np.float32)] * 2, [10, 10])
    replies.append(Message(Error(code=0, reason="hospital-2: injected crash"), reply_to=instructions[2]))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None and strategy.aggregated[1] == 0
    assert strategy.privacy_spent().num_releases == 0  # nothing released, nothing spent
    assert [(r["site"], r["status"]) for r in rec.rows] == [("hospital-0", "ok"), ("hospital-1", "ok"),
                                                            ("hospital-2", "failed")]


def test_a_resumed_run_counts_its_earlier_rounds_as_releases(tmp_path):
    rec = RoundsRecorder(RunDir(tmp_path), "classification")
    fresh = build_strategy("fedavg", rec, min_nodes=3, hospitals=3, dp="client-fixed", dp_noise_multiplier=1.0)
    resumed = build_strategy("fedavg", rec, min_nodes=3, hospitals=3, dp="client-fixed", dp_noise_multiplier=1.0,
                             round_offset=2)
    assert fresh.privacy_spent().num_releases == 0 and resumed.privacy_spent().num_releases == 2
    assert resumed.privacy_spent().epsilon > 0
    # adaptive clipping and fedadam get no accountant from Flower: epsilon is not reported
    assert build_strategy("fedadam", rec, min_nodes=3, hospitals=3, dp="server-fixed", dp_noise_multiplier=1.0,
                          eta=0.01, eta_l=0.01, tau=1e-3).accountant is None


def test_dashboard_summary_names_the_privacy_parameters():
    from gradprom.dashboard.views.federation import privacy_text

    assert privacy_text({}) == "no DP" and privacy_text({"dp": "none"}) == "no DP"
    assert privacy_text({"dp": "server-fixed", "dp_clipping_norm": 2.0, "dp_noise_multiplier": 0.5,
                         "dp_delta": 1e-5, "dp_epsilon": 16.513}) == (
        "DP server-fixed (clipping norm 2, noise multiplier 0.5, ε 16.5 at δ 1e-05)")
    assert privacy_text({"dp": "adaptive", "dp_clipping_norm": 1.0, "dp_noise_multiplier": 1.0,
                         "dp_epsilon": None}).endswith("ε not accounted)")
