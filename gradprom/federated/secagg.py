"""Secure aggregation (`federated.secure_aggregation: secagg+`): Flower's own SecAgg+, the server's side.

What Flower 1.42 offers (read in the installed package, flwr/server/workflow/secure_aggregation/,
flwr/client/mod/secure_aggregation/, flwr/server/compat/legacy_context.py, flwr/server/workflow/default_workflows.py,
and in Flower's repository, snapshot of 2026-03-29):
- SecAgg+ exists on the legacy path only. `flwr.server.workflow.SecAggPlusWorkflow` is the *fit workflow* of
  `flwr.server.workflow.DefaultWorkflow`; both raise TypeError unless the context is a `flwr.server.LegacyContext`,
  which carries a legacy `flwr.server.strategy` Strategy (FitIns/FitRes, Parameters without names) and a
  ClientManager. The Message-API strategies (`flwr.serverapp.strategy`, `strategy.start`) have no secure
  aggregation, and neither has Flower's main branch. So under `secagg+` the ServerApp runs DefaultWorkflow with the
  legacy twin of the configured strategy (FedAvg, FedProx, FedAdam, FedYogi from `flwr.server.strategy`).
- The site side is `flwr.client.mod.secaggplus_mod` (secagg_site.py). In its collect stage it calls the app,
  converts the reply with flwr.compat's `recorddict_to_fitres` (the reply must be in the legacy `fitres.*`
  layout), quantises and masks `[n_k, n_k * vector]`, and clears the reply's arrays. The reply's ConfigRecords
  (`fitres.metrics`) and `fitres.num_examples` travel in the clear.
- The server sums the masked vectors, removes the masks (Shamir shares of each site's seeds), and hands the
  strategy's `aggregate_fit` FitRes whose parameters are *all* replaced by the one weighted mean
  Σ n_k v_k / Σ n_k; each FitRes keeps its site's own num_examples and metrics.
- Quantisation: site k multiplies v_k by dq_k = round(n_k / W · Q) / Q (W = max_weight), clips to [-c, c] and
  rounds stochastically to Q levels over [-c, c]; the server divides the unmasked sum by Σ dq_k. An entry of the
  mean is therefore off from FedAvg's by at most (N · 2c/Q + Σ_k |dq_k − n_k/W| · |v_k − v̄|) / Σ_k dq_k (N sites).
- A 0-d array comes back wrong: `unmask_stage` finishes each array in place (`vec += offset; vec *= ratio`), which
  for a 0-d array rebinds a NumPy scalar and leaves the raw quantised sum. Sites send 0-d arrays (BatchNorm's
  num_batches_tracked) as 1-element arrays (secagg_site.py); the server puts the shape back.
- Dropouts: a site lost after the setup stage is unmasked from its neighbours' shares if at least the threshold
  answer; otherwise the workflow halts the round, `aggregate_fit` is never called and the global model is kept.

What GradProm adds: each site sends its update (new − global) rather than its weights, so the server adds the
secure mean update to the round's global model, which equals FedAvg of the weights. With `gate_level: server` the
site appends (A_e, A_r); the server gate receives their secure weighted means as its one pair and never a site's.
The run directory (run.json, rounds.parquet, checkpoints, resume) is FederationRun's, as without SecAgg+.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAdam, FedAvg, FedProx, FedYogi
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from .partition import site_name
from .records import RoundsRecorder
from .secagg_site import ARRAY_KEYS
from .strategy import STOP, FederationStopped, from_record, reason_text, site_in_reason, to_record

log = logging.getLogger(__name__)
LEGACY = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi}


def secagg_header(fed: Any) -> dict[str, Any]:
    """The secure-aggregation settings as run.json records them."""
    if fed.secure_aggregation == "none":
        return {"secure_aggregation": "none"}
    return {"secure_aggregation": fed.secure_aggregation, "secagg_clipping_range": fed.secagg_clipping_range,
            "secagg_quantization_range": fed.secagg_quantization_range, "secagg_max_weight": fed.secagg_max_weight,
            "secagg_reconstruction_threshold": fed.secagg_reconstruction_threshold, "secagg_sent": "updates"}


def add_update(start: dict[str, np.ndarray], mean_update: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The round's global model plus the secure mean update, in the model's own dtypes (counters rounded)."""
    out = {}
    for (k, s), d in zip(start.items(), mean_update, strict=True):
        v = np.asarray(s, dtype=np.float64) + np.asarray(d, dtype=np.float64).reshape(np.shape(s))
        out[k] = v.astype(s.dtype) if s.dtype.kind == "f" else np.rint(v).astype(s.dtype)
    return out


def as_dtypes(arrays: list[np.ndarray], like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The strategy's aggregate by name, cast back to the model's dtypes (Flower's mean makes integers float)."""
    return {k: (a.astype(s.dtype) if s.dtype.kind == "f" else np.rint(a).astype(s.dtype)).reshape(np.shape(s))
            for (k, s), a in zip(like.items(), arrays, strict=True)}


class SecureRecording:
    """Mixed in before a legacy Flower strategy: the round's bookkeeping on what SecAgg+ hands over (one secure
    mean, each site's metrics), then the shipped strategy's own aggregate_fit on the resulting weights."""

    def setup_secure(self, recorder: RoundsRecorder, keys: list[str], round_offset: int, server_gate,
                     min_answers: int, with_pair: bool) -> None:
        """Attach the recorder, the arrays' names and (for `gate_level: server`) the server gate."""
        self.recorder, self.keys, self.round_offset = recorder, keys, round_offset
        self.server_gate, self.min_answers, self.with_pair = server_gate, min_answers, with_pair
        self.aggregated: dict[int, int] = {}  # round -> sites in the secure mean (0: the global model was kept)
        self.sampled: dict[int, list[int]] = {}
        self.round_start: dict[int, dict[str, np.ndarray]] = {}
        self.node_sites: dict[int, str] = {}

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        if STOP.is_set():
            raise FederationStopped(f"stopped by the user after round {server_round - 1 + self.round_offset}")
        start = dict(zip(self.keys, parameters_to_ndarrays(parameters), strict=True))
        self.round_start[server_round] = start
        if hasattr(self, "current_weights"):  # FedAdam/FedYogi step from the global model, gated or not
            self.current_weights = [np.asarray(v, dtype=np.float64) for v in start.values()]
        out = super().configure_fit(server_round, parameters, client_manager)
        self.sampled[server_round] = [proxy.node_id for proxy, _ in out]
        return out

    def _record_replies(self, rnd: int, server_round: int, results, failures) -> None:
        answered = set()
        for proxy, res in results:
            site = site_name(int(res.metrics["site"]))
            self.node_sites[proxy.node_id] = site
            answered.add(proxy.node_id)
            self.recorder.site_row(rnd, site, "ok", None, dict(res.metrics))
        named = set()
        for failure in failures:  # Exception(Error) from the workflow; SecAgg+ lists a collect-stage error twice
            error = failure.args[0] if isinstance(failure, Exception) and failure.args else failure
            text = reason_text(getattr(error, "reason", None) or str(error))
            site = site_in_reason(text) or f"unknown site ({text[:60]})"
            if site in named:
                continue
            named.add(site)
            self.recorder.site_row(rnd, site, "failed", text)
            log.warning("round %d: %s failed: %s", rnd, site, text)
        # a failure names its site, not its node: a missing node of unknown site may be one of them
        missing = [node for node in self.sampled.get(server_round, []) if node not in answered]
        known = {self.node_sites[node] for node in missing if node in self.node_sites}
        unmatched = len(named - known)
        for node in missing:
            site = self.node_sites.get(node)
            if site is None and unmatched > 0:
                unmatched -= 1
                continue
            if site not in named:
                self.recorder.site_row(rnd, site or f"node-{node}", "failed", "no reply within the round timeout, "
                                       "or dropped out of secure aggregation")

    def aggregate_fit(self, server_round: int, results: list, failures: list):
        rnd = server_round + self.round_offset
        self._record_replies(rnd, server_round, results, failures)
        if len(results) < self.min_answers or not results:
            log.warning("round %d: %d usable replies, %d needed (federated.min_answers); the global model is kept",
                        rnd, len(results), self.min_answers)
            self.aggregated[rnd] = 0
            return None, {}
        # every FitRes carries the same secure mean (SecAgg+ replaced each site's parameters by it)
        mean = parameters_to_ndarrays(results[0][1].parameters)
        n_weights = len(self.keys)
        pair = mean[n_weights:]
        if len(mean) != n_weights + (2 if self.with_pair else 0):
            raise RuntimeError(f"secure aggregate has {len(mean)} arrays, expected {n_weights} model arrays"
                               f"{' + 2 gate arrays' if self.with_pair else ''}")
        start = self.round_start[server_round]
        weights = add_update(start, mean[:n_weights])
        total = sum(res.num_examples for _, res in results)
        # one FitRes of the mean: the shipped strategy's weighted mean of it is the mean itself
        one = [(results[0][0], FitRes(results[0][1].status, ndarrays_to_parameters(list(weights.values())), total,
                                      {}))]
        agg, metrics = super().aggregate_fit(server_round, one, [])
        self.aggregated[rnd] = len(results) if agg is not None else 0
        if agg is None:
            return None, {}
        arrays = as_dtypes(parameters_to_ndarrays(agg), start)
        if self.server_gate is not None and pair:
            gated = self.server_gate(rnd, to_record(start), to_record(arrays), [(pair[0], pair[1])], [1.0])
            arrays = from_record(gated)
        return ndarrays_to_parameters(list(arrays.values())), metrics

    def aggregate_evaluate(self, server_round: int, results: list, failures: list):
        rnd = server_round + self.round_offset
        for _, res in results:
            self.recorder.site_eval(rnd, site_name(int(res.metrics["site"])), dict(res.metrics))
        if results:  # the legacy workflow evaluates on the sites after the server's evaluation wrote the table
            self.recorder.write()
        return super().aggregate_evaluate(server_round, results, failures)

    def after_round(self, server_round: int) -> None:
        """A round the workflow halted (too few sites for the reconstruction threshold) never reached
        aggregate_fit: its sampled sites are recorded as failed and the global model is kept."""
        rnd = server_round + self.round_offset
        if rnd in self.aggregated:
            return
        self.aggregated[rnd] = 0
        log.warning("round %d: secure aggregation halted (fewer sites answered than its reconstruction threshold "
                    "needs); the global model is kept", rnd)
        for node in self.sampled.get(server_round, []):
            self.recorder.site_row(rnd, self.node_sites.get(node, f"node-{node}"), "failed",
                                   "secure aggregation halted: too few sites answered to unmask the sum")


def build_secure_strategy(name: str, recorder: RoundsRecorder, *, keys: list[str], initial: dict[str, np.ndarray],
                          round_config: Callable[[int], dict[str, Any]],
                          evaluate_fn: Callable[[int, list[np.ndarray], dict], Any], min_nodes: int,
                          fraction_train: float = 1.0, evaluate_sites: bool = True, round_offset: int = 0,
                          server_gate=None, with_pair: bool = False, min_answers: int = 1, **params: Any):
    """The legacy twin of the Flower strategy `name`, recording into `recorder` (see SecureRecording)."""
    base = LEGACY[name]
    kwargs: dict[str, Any] = dict(
        fraction_fit=fraction_train, fraction_evaluate=1.0 if evaluate_sites else 0.0, min_fit_clients=min_nodes,
        min_evaluate_clients=min_nodes, min_available_clients=min_nodes, evaluate_fn=evaluate_fn,
        on_fit_config_fn=round_config, on_evaluate_config_fn=round_config,
        initial_parameters=ndarrays_to_parameters(list(initial.values())),
        # the rounds table keeps every site's metrics; Flower's averages of them are not used
        fit_metrics_aggregation_fn=lambda metrics: {}, evaluate_metrics_aggregation_fn=lambda metrics: {})
    if name == "fedprox":
        kwargs["proximal_mu"] = params["proximal_mu"]
    elif name in ("fedadam", "fedyogi"):
        kwargs.update(eta=params["eta"], eta_l=params["eta_l"], tau=params["tau"])
    strategy = type(f"Secure{base.__name__}", (SecureRecording, base), {})(**kwargs)
    strategy.setup_secure(recorder, keys, round_offset, server_gate, min_answers, with_pair)
    return strategy


def secagg_workflow(fed: Any) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the federation's settings (every sampled site shares its keys with all)."""
    return SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=float(fed.secagg_reconstruction_threshold),
                              max_weight=float(fed.secagg_max_weight), clipping_range=float(fed.secagg_clipping_range),
                              quantization_range=int(fed.secagg_quantization_range), timeout=fed.round_timeout_s)


class TimedGrid:
    """The grid with the round timeout as its default: Flower's legacy evaluate workflow (and its parameter
    request) wait for replies without a timeout, so a lost site or a crashed runtime would hang the federation."""

    def __init__(self, grid: Grid, timeout: float):
        self._grid, self._timeout = grid, timeout

    def send_and_receive(self, messages, *, timeout: float | None = None):
        return self._grid.send_and_receive(messages, timeout=self._timeout if timeout is None else timeout)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def run_secure(grid: Grid, context: Context, strategy, fed: Any, num_rounds: int) -> None:
    """`num_rounds` rounds of Flower's DefaultWorkflow with SecAgg+ as its fit workflow."""
    secagg = secagg_workflow(fed)

    def fit(grid_: Grid, ctx: Context) -> None:
        secagg(grid_, ctx)
        strategy.after_round(int(ctx.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))

    legacy = LegacyContext(context, config=ServerConfig(num_rounds=num_rounds, round_timeout=fed.round_timeout_s),
                           strategy=strategy)
    DefaultWorkflow(fit_workflow=fit)(TimedGrid(grid, fed.round_timeout_s), legacy)


def round_config_fn(keys: list[str], base: Callable[[], dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
    """The legacy strategies' per-round config: the round, the arrays' names, and the driver's own values."""
    names = ",".join(keys)

    def config(server_round: int) -> dict[str, Any]:
        return {"server-round": server_round, ARRAY_KEYS: names, **base()}

    return config
