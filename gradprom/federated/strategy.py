"""Flower's own strategies, chosen by name, wrapped only to see each round's replies.

The wrapper records every reply in the rounds table, drops replies with non-finite weights before the
strategy aggregates (they are `rejected`, never averaged in), takes the server gate's pair out of the replies
(`gate_level: server`), and then calls the shipped strategy's own `aggregate_train`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi

from gradprom.platform.checkpoint import save_checkpoint

from .partition import site_name
from .privacy import DP_WEIGHT, WRAPPERS, after_release, make_accountant, private_pair, wrap
from .records import RoundsRecorder
from .task import GATE_KEYS, all_finite

log = logging.getLogger(__name__)
# set by a SIGINT/SIGTERM handler (simulation.py): the federation stops before its next round
STOP = threading.Event()
BASES = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi}
# the replying site travels in its own ConfigRecord: a MetricRecord's fields are averaged by the strategy
SITE_RECORD = "site"
_SITE_IN_REASON = re.compile(r"hospital-(\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def reason_text(reason: str | None) -> str:
    """Flower's error reason (a Ray traceback in simulation, "<class 'X'>:<'message'>" in deployment) as the
    ClientApp's own one-line message."""
    text = _ANSI.sub("", reason or "unknown error")
    found = re.search(r"occurred\. Message: (.*)", text, flags=re.S)  # ClientAppException wraps the message
    if found:
        text = found.group(1)
    else:
        m = re.match(r"<class '([^']+)'>:<'(.*)'>$", text, flags=re.S)
        if m:
            text = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    text = text.strip().split("\n")[0].rstrip("'>")
    return " ".join(text.split())[:2000]


def site_in_reason(text: str) -> str | None:
    """The site an error reason names (a site's own errors start with "hospital-<k>:"), or None."""
    found = _SITE_IN_REASON.search(text or "")
    return site_name(int(found.group(1))) if found else None


class FederationStopped(KeyboardInterrupt):
    """The user asked the federation to stop; it stops between rounds, after the last checkpoint."""


class RecordingMixin:
    """Mixed in before a Flower strategy: records replies, rejects non-finite ones, extracts the gate pair."""

    recorder: RoundsRecorder
    round_offset: int
    server_gate: Callable[[int, ArrayRecord, list[tuple[np.ndarray, np.ndarray]], list[float]], ArrayRecord] | None

    def setup_recording(self, recorder: RoundsRecorder, round_offset: int = 0, server_gate=None,
                        updates_dir: Path | None = None, min_answers: int = 1) -> None:
        """Attach the recorder (and the server gate, for `gate_level: server`; the updates folder, if kept)."""
        self.recorder, self.round_offset, self.server_gate = recorder, round_offset, server_gate
        self.min_answers = min_answers
        self.aggregated: dict[int, int] = {}  # round -> sites averaged in (0: the global model was kept)
        self.updates_dir = updates_dir
        self.node_sites: dict[int, str] = {}
        self.sampled: dict[int, list[int]] = {}
        self.round_start: dict[int, ArrayRecord] = {}
        self.dp_on = False  # under DP: the server gate's pair is clipped and noised like the weights

    def _site_of(self, msg: Message) -> str:
        node = msg.metadata.src_node_id
        if not msg.has_error() and SITE_RECORD in msg.content.config_records:
            self.node_sites[node] = site_name(int(msg.content.config_records[SITE_RECORD]["site"]))
        elif node not in self.node_sites:
            named = site_in_reason(msg.error.reason or "")
            if named:
                return named
        return self.node_sites.get(node, f"node-{node}")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if STOP.is_set():
            raise FederationStopped(f"stopped by the user after round {server_round - 1 + self.round_offset}")
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        self.sampled[server_round] = [m.metadata.dst_node_id for m in msgs]
        self.round_start[server_round] = arrays
        return msgs

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        replies = list(replies)
        keep, pairs, weights = [], [], []
        answered = set()
        for msg in replies:
            answered.add(msg.metadata.src_node_id)
            site = self._site_of(msg)
            if msg.has_error():
                self.recorder.site_row(rnd, site, "failed", reason_text(msg.error.reason))
                log.warning("round %d: %s failed: %s", rnd, site, reason_text(msg.error.reason))
                continue
            rec: ArrayRecord = msg.content["arrays"]
            metrics = dict(next(iter(msg.content.metric_records.values())))
            arrays = {k: a.numpy() for k, a in rec.items()}
            if self.updates_dir is not None:  # debugging and tests: the reply exactly as it arrived
                save_checkpoint(self.updates_dir / f"round-{rnd}" / f"{site}.pt",
                                {"arrays": {k: torch.as_tensor(np.array(v)) for k, v in arrays.items()},
                                 "num_examples": int(metrics["num-examples"])})
            if not all_finite(arrays):
                self.recorder.site_row(rnd, site, "rejected", "non-finite weights (NaN/Inf); not averaged in",
                                       metrics)
                log.warning("round %d: %s sent non-finite weights; rejected", rnd, site)
                continue
            if GATE_KEYS[0] in rec:  # the server gate's pair travels beside the weights, never aggregated as weights
                pairs.append((arrays[GATE_KEYS[0]], arrays[GATE_KEYS[1]]))
                weights.append(float(metrics["num-examples"]))
                for k in GATE_KEYS:
                    del rec[k]
            self.recorder.site_row(rnd, site, "ok", None, metrics)
            keep.append(msg)
        for node in self.sampled.get(server_round, []):
            if node not in answered:  # replies that miss the round's timeout never arrive
                site = self.node_sites.get(node, f"node-{node}")
                self.recorder.site_row(rnd, site, "failed", "no reply within the round timeout")
                log.warning("round %d: %s did not answer in time", rnd, site)
        if len(keep) < self.min_answers:
            log.warning("round %d: %d usable replies, %d needed (federated.min_answers); the global model is kept",
                        rnd, len(keep), self.min_answers)
            self.aggregated[rnd] = 0
            return None, None
        if self.dp_on and pairs:  # the wrapper's own norm and noise, before it adapts the norm
            pairs = [private_pair(pairs, float(self.clipping_norm), float(self.noise_multiplier),
                                  self.num_sampled_clients)]
            weights = [1.0]
        arrays, metrics = super().aggregate_train(server_round, keep)
        if arrays is not None and self.dp_on:
            arrays = to_record(after_release(from_record(arrays)))
        self.aggregated[rnd] = len(keep) if arrays is not None else 0
        if arrays is None:
            log.warning("round %d: the strategy released no aggregate (under DP with an accountant: a sampled "
                        "site did not answer usably); the global model is kept", rnd)
        if arrays is not None and self.server_gate is not None and pairs:
            arrays = self.server_gate(rnd, self.round_start[server_round], arrays, pairs, weights)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rnd = server_round + self.round_offset
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                self.recorder.site_eval(rnd, self._site_of(msg), dict(next(iter(msg.content.metric_records.values()))))
        return super().aggregate_evaluate(server_round, replies)


def build_strategy(name: str, recorder: RoundsRecorder, *, min_nodes: int, fraction_train: float = 1.0,
                   evaluate_sites: bool = True, round_offset: int = 0, server_gate=None,
                   updates_dir: Path | None = None, min_answers: int = 1, dp: str = "none",
                   dp_clipping_norm: float = 1.0, dp_noise_multiplier: float = 0.0, dp_delta: float = 1e-5,
                   hospitals: int | None = None, **params: Any):
    """The Flower strategy `name` (fedavg | fedprox | fedadam | fedyogi), recording into `recorder`; with `dp`
    (client-fixed | server-fixed | adaptive) inside Flower's DP wrapper (privacy.py)."""
    base = BASES[name]
    kwargs = dict(fraction_train=fraction_train, fraction_evaluate=1.0 if evaluate_sites else 0.0,
                  min_train_nodes=min_nodes,
                  min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes)
    if name == "fedprox":
        kwargs["proximal_mu"] = params["proximal_mu"]
    elif name in ("fedadam", "fedyogi"):
        kwargs.update(eta=params["eta"], eta_l=params["eta_l"], tau=params["tau"])
    if dp == "none":
        strategy = type(f"Recorded{base.__name__}", (RecordingMixin, base), {})(**kwargs)
    else:
        hospitals = hospitals or min_nodes
        # Flower's sampling once every site is connected: max(int(n * fraction), min_train_nodes)
        sampled = max(int(hospitals * fraction_train), min_nodes)
        inner = base(**kwargs, weighted_by_key=DP_WEIGHT)
        accountant = make_accountant(dp, name, dp_noise_multiplier, hospitals, dp_delta)
        if accountant is not None and round_offset:  # a resumed run: count the earlier rounds as releases
            from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

            accountant.compose(GaussianPrivacyEvent(dp_noise_multiplier, sampled, hospitals), count=round_offset)
        cls = type(f"Recorded{WRAPPERS[dp].__name__}", (RecordingMixin, WRAPPERS[dp]), {})
        strategy = wrap(dp, inner, cls, clipping_norm=dp_clipping_norm, noise_multiplier=dp_noise_multiplier,
                        num_sampled=sampled, accountant=accountant)
    strategy.setup_recording(recorder, round_offset, server_gate, updates_dir, min_answers)
    strategy.dp_on = dp != "none"
    return strategy


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """A flat array dict as a Flower ArrayRecord."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A Flower ArrayRecord as a flat array dict."""
    return {k: a.numpy() for k, a in record.items()}
