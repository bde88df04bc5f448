"""The site's side of secure aggregation (`federated.secure_aggregation: secagg+`; the server's side and the facts
about Flower 1.42's SecAgg+ are in secagg.py).

Under SecAgg+ the server speaks Flower's legacy layout (`fitins.parameters` / `fitins.config`, `evaluateins.*`),
and Flower's `secaggplus_mod` converts the site's reply with flwr.compat's `recorddict_to_fitres`. So the site
answers in the legacy `fitres.*` / `evaluateres.*` layout, built with flwr.compat's own converters:

  vector   [new - global for every array (`array-keys` order, integer buffers included, 0-d ones as 1-element
           arrays)] + [A_e, A_r] with `gate_level: server`. The update, not the weights: large weights (BatchNorm
           variances, step counters) never meet SecAgg+'s clipping range; the server adds the secure mean back to
           the global model
  weight   FitRes.num_examples (SecAgg+ weighs each vector by it inside the mask)
  metrics  FitRes.metrics (the site index, losses, PSNR, ...): in the clear, as Flower's mod leaves them

Before Flower masks the vector the site checks that SecAgg+ can carry it: finite, within the clipping range after
the weighting, and a weight no larger than `secagg_max_weight`. A vector that fails is never sent; the site fails
the round with an error that names the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import Mod
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from .config import FedConfig, build_federation
from .partition import site_name
from .task import LocalResult

LEGACY_FIT, LEGACY_FIT_REPLY, LEGACY_EVALUATE = "fitins.parameters", "fitres.parameters", "evaluateins.parameters"
ARRAY_KEYS = "array-keys"  # the names of the legacy (unnamed) arrays, in the server's order, one string


def is_legacy(content: RecordDict, key: str = LEGACY_FIT) -> bool:
    """A message in Flower's legacy layout (what the SecAgg+ workflow sends)."""
    return key in content.array_records


def legacy_inputs(content: RecordDict, evaluate: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(global arrays by name, round config) out of a legacy FitIns / EvaluateIns."""
    ins = compat.recorddict_to_evaluateins(content, True) if evaluate else compat.recorddict_to_fitins(content, True)
    keys = str(ins.config[ARRAY_KEYS]).split(",")
    return dict(zip(keys, parameters_to_ndarrays(ins.parameters), strict=True)), dict(ins.config)


def masked_vector(start: dict[str, np.ndarray], res: LocalResult, fed: FedConfig) -> list[np.ndarray]:
    """What the site hands to SecAgg+: its update for every array, then its (A_e, A_r) under server gating."""
    vec = [np.asarray(res.arrays[k], dtype=np.float64) - np.asarray(start[k], dtype=np.float64) for k in start]
    if fed.gate_level == "server":
        vec += [np.asarray(res.sum_ge, dtype=np.float64), np.asarray(res.sum_gr, dtype=np.float64)]
    # Flower 1.42's unmask stage finishes each array in place (`vec += offset; vec *= ratio`), which leaves a 0-d
    # array (BatchNorm's num_batches_tracked) as the raw quantised sum; as a 1-element array it is finished too
    return [np.atleast_1d(v) for v in vec]


def fit_reply(msg: Message, vector: list[np.ndarray], num_examples: int, metrics: dict[str, Any]) -> Message:
    """The site's FitRes in the legacy layout (Flower's secaggplus_mod masks the arrays, keeps the metrics)."""
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vector), int(num_examples), metrics)
    return Message(compat.fitres_to_recorddict(res, False), reply_to=msg)


def evaluate_reply(msg: Message, loss: float, num_examples: int, metrics: dict[str, Any]) -> Message:
    """The site's EvaluateRes in the legacy layout."""
    res = EvaluateRes(Status(Code.OK, ""), float(loss), int(num_examples), metrics)
    return Message(compat.evaluateres_to_recorddict(res), reply_to=msg)


def reply_vector(reply: Message) -> list[np.ndarray]:
    """The vector of a legacy train reply (before SecAgg+ masks it)."""
    return parameters_to_ndarrays(compat.recorddict_to_fitres(reply.content, True).parameters)


def replace_vector(reply: Message, vector: list[np.ndarray]) -> None:
    """Put `vector` into a legacy train reply in place (fault injection's NaN reply)."""
    reply.content.array_records[LEGACY_FIT_REPLY] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(vector), False)


def check_maskable(vector: list[np.ndarray], num_examples: int, fed: FedConfig, site: str) -> None:
    """Refuse (ValueError naming the field) a vector that SecAgg+ would silently clip or overflow."""
    w, c, q = fed.secagg_max_weight, fed.secagg_clipping_range, fed.secagg_quantization_range
    if num_examples > w:
        raise ValueError(f"{site}: {num_examples} training images exceed `federated.secagg_max_weight` ({w:g}); "
                         f"SecAgg+ would overflow its weight. Raise secagg_max_weight to at least {num_examples}")
    if not all(np.isfinite(v).all() for v in vector):
        raise ValueError(f"{site}: non-finite update (NaN/Inf); not sent to secure aggregation")
    dq = round(num_examples / w * q) / q  # the weight Flower's mod multiplies the vector by (secaggplus_mod.py)
    peak = max((float(np.abs(v).max()) for v in vector if v.size), default=0.0) * dq
    if peak > c:
        raise ValueError(f"{site}: an entry of its weighted update ({peak:.4g}) is outside "
                         f"`federated.secagg_clipping_range` ({c:g}); SecAgg+ would clip it. Raise the range "
                         f"(coarser quantisation) or lower the learning rate")


def secure_mod(config_of: Callable[[Context], dict[str, Any]]) -> Mod:
    """Flower's secaggplus_mod for the messages of the SecAgg+ workflow (they carry its config record), with the
    site's check of its vector just before the mod masks it; any other message passes straight through."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        if RECORD_KEY_CONFIGS not in msg.content.config_records:
            return call_next(msg, context)

        def checked(m: Message, ctx: Context) -> Message:
            reply = call_next(m, ctx)
            if reply.has_content() and is_legacy(reply.content, LEGACY_FIT_REPLY):
                _, fed = build_federation(config_of(ctx), source="federation config")
                site = site_name(int(ctx.node_config["partition-id"]))
                num = int(reply.content.metric_records["fitres.num_examples"]["num_examples"])
                check_maskable(reply_vector(reply), num, fed, site)
            return reply

        return secaggplus_mod(msg, context, checked)

    return mod
