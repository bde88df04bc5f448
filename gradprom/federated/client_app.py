"""The hospital's ClientApp: Flower glue around task.py. Only weights and metrics leave the site.

The module-level `app` serves `gradprom federate` (Flower's simulation runtime), `flwr run .` and real
SuperNodes alike: it reads the config from `context.run_config` and the site from `context.node_config`
(`partition-id`, optional `data-path`: the hospital's own .npz).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from gradprom.platform.errors import GradPromError

from .config import build_federation, from_run_config
from .faults import fault_mod
from .message_bytes import message_bytes_mod
from .partition import info_from_config, load_site, site_name
from .privacy import DP_WEIGHT, as_float
from .secagg_site import LEGACY_EVALUATE, evaluate_reply, fit_reply, is_legacy, legacy_inputs, masked_vector, secure_mod
from .strategy import SITE_RECORD, from_record, to_record
from .task import GATE_KEYS, evaluate_arrays, site_datasets, train_site

log = logging.getLogger(__name__)


def _site(context: Context) -> tuple[int, str | None]:
    nc = context.node_config
    path = nc.get("data-path")
    return int(nc["partition-id"]), (str(path) if path else None)


def site_config(context: Context) -> dict[str, Any]:
    """The federation's config from the run config, with `hospitals` from the node config if unset."""
    out = from_run_config(dict(context.run_config))
    fed = out.setdefault("federated", {})
    if "hospitals" not in fed and "num-partitions" in context.node_config:
        fed["hospitals"] = int(context.node_config["num-partitions"])
    return out


def _site_error(k: int, e: Exception) -> RuntimeError:
    """One line that names the site (the server records it in the rounds table)."""
    text = str(e) if isinstance(e, GradPromError) else f"{type(e).__name__}: {e}"
    return RuntimeError(text if text.startswith(site_name(k)) else f"{site_name(k)}: {text}")


def handle_train(msg: Message, context: Context, raw: dict[str, Any]) -> Message:
    """Train locally from the global weights; reply with the new weights and the site's metrics (under SecAgg+:
    with the update, in Flower's legacy layout, for its mod to mask)."""
    torch.set_num_threads(1)
    k, data_path = _site(context)
    legacy = is_legacy(msg.content)
    try:
        cfg, fed = build_federation(raw, source="federation config")
        if legacy:
            start, conf = legacy_inputs(msg.content)
        else:
            start, conf = from_record(msg.content["arrays"]), msg.content["config"]
        rnd = int(conf["server-round"]) + int(conf.get("round-offset", 0))
        info = info_from_config(conf)  # the model's shape comes from the server: a site needs only its own data
        site = load_site(cfg, fed, k, data_path, expect=info)
        mu = conf.get("proximal-mu", conf.get("proximal_mu", 0.0))  # Message-API / legacy FedProx key
        res = train_site(cfg, fed, info, site, start, rnd, proximal_mu=float(mu))
    except Exception as e:
        raise _site_error(k, e) from None
    if legacy:
        return fit_reply(msg, masked_vector(start, res, fed), len(site.train), {**res.metrics, "site": k})
    arrays = res.arrays
    if fed.dp != "none":  # Flower's DP wrappers assume a plain mean: every site weighs 1
        res.metrics[DP_WEIGHT] = 1.0
        arrays = as_float(arrays)  # Flower clips and noises every array in place; integer buffers cannot take it
    if fed.gate_level == "server":
        arrays = {**arrays, GATE_KEYS[0]: res.sum_ge, GATE_KEYS[1]: res.sum_gr}
    return Message(RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(res.metrics),
                               SITE_RECORD: ConfigRecord({"site": k})}), reply_to=msg)


def handle_evaluate(msg: Message, context: Context, raw: dict[str, Any]) -> Message:
    """Evaluate the global weights on the site's own validation split."""
    torch.set_num_threads(1)
    k, data_path = _site(context)
    legacy = is_legacy(msg.content, LEGACY_EVALUATE)
    try:
        cfg, fed = build_federation(raw, source="federation config")
        if legacy:
            arrays, conf = legacy_inputs(msg.content, evaluate=True)
        else:
            arrays, conf = from_record(msg.content["arrays"]), msg.content["config"]
        info = info_from_config(conf)
        site = load_site(cfg, fed, k, data_path, expect=info)
        _, val_ds = site_datasets(cfg, site, k)
        metrics = evaluate_arrays(cfg, info, arrays, val_ds)
    except Exception as e:
        raise _site_error(k, e) from None
    if legacy:
        return evaluate_reply(msg, metrics.get("loss_e", 0.0), len(site.val), {**metrics, "site": k})
    reply = {"num-examples": len(site.val), **metrics}
    if fed.dp != "none":  # the strategy weighs evaluation replies by the same key
        reply[DP_WEIGHT] = 1.0
    return Message(RecordDict({"metrics": MetricRecord({n: float(v) for n, v in reply.items()}),
                               SITE_RECORD: ConfigRecord({"site": k})}), reply_to=msg)


def clip_when_asked_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's fixedclipping_mod when the server's DP wrapper sent a clipping norm (`dp: client-fixed`),
    else a pass-through (the mod itself fails a message without one)."""
    conf = msg.content.config_records.get("config")
    if conf is not None and KEY_CLIPPING_NORM in conf:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def train_mods() -> list:
    """The train handler's mods, outermost first: SecAgg+ (masks what leaves the site), DP's clipping (after any
    fault), faults. Each reads the run config per message and passes straight through when it does not apply."""
    return [secure_mod(site_config), clip_when_asked_mod, fault_mod(site_config)]


# GRADPROM_MESSAGE_BYTES_LOG: measuring only (message_bytes.py)
_counter = [m for m in (message_bytes_mod(),) if m is not None]
app = ClientApp()


@app.train(mods=[*_counter, *train_mods()])
def train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context, site_config(context))


@app.evaluate(mods=_counter)
def evaluate(msg: Message, context: Context) -> Message:
    return handle_evaluate(msg, context, site_config(context))
