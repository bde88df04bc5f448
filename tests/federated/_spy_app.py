"""The secure-aggregation tests' own Flower apps: GradProm's ServerApp and ClientApp with two hooks that belong to
the test, not to the product. They run where Flower runs the apps (its simulation process and the ClientApps' Ray
actors), so they write what they saw into the folder named by SPY_ENV, and the test reads it after the run:

  sites/round-<r>-site-<k>.pt   each site's own record of the vector it handed to the masking (a train mod
                                innermost in the site's own mod chain), or without SecAgg+ of its plain reply
  gate-<i>.pt                   what reached the server gate (the pairs and their weights)
  fit-<i>.pt                    what reached the secure strategy's aggregate_fit (the replies' arrays)
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
from flwr.clientapp import ClientApp
from flwr.common import parameters_to_ndarrays

from gradprom.federated import driver as driver_module
from gradprom.federated import server_gate as server_gate_module
from gradprom.federated.client_app import handle_evaluate, handle_train, site_config, train_mods
from gradprom.federated.secagg import SecureRecording
from gradprom.federated.secagg_site import is_legacy, legacy_inputs, reply_vector
from gradprom.federated.server_app import app as server
from gradprom.federated.strategy import from_record
from gradprom.federated.task import GATE_KEYS

SPY_ENV = "GRADPROM_TEST_SPY_DIR"
_calls = itertools.count()


def _folder() -> Path:
    return Path(os.environ[SPY_ENV])


def _tensors(arrays) -> list[torch.Tensor]:
    return [torch.as_tensor(np.array(a)) for a in arrays]


def _site_recorder(msg, context, call_next):
    reply = call_next(msg, context)
    k = int(context.node_config["partition-id"])
    if is_legacy(msg.content):
        start, conf = legacy_inputs(msg.content)
        n = int(reply.content.metric_records["fitres.num_examples"]["num_examples"])
        vector = reply_vector(reply)
    else:
        start, conf = from_record(msg.content["arrays"]), msg.content["config"]
        sent = from_record(reply.content["arrays"])
        n = int(next(iter(reply.content.metric_records.values()))["num-examples"])
        vector = [np.asarray(sent[key], np.float64) - np.asarray(start[key], np.float64) for key in start]
        vector += [sent[key] for key in GATE_KEYS if key in sent]
    folder = _folder() / "sites"
    folder.mkdir(parents=True, exist_ok=True)
    rnd = int(conf["server-round"]) + int(conf.get("round-offset", 0))  # a resumed run counts on
    torch.save({"n": n, "start": {key: torch.as_tensor(np.array(v)) for key, v in start.items()},
                "vector": _tensors(vector)}, folder / f"round-{rnd}-site-{k}.pt")
    return reply


# --- the ClientApp: the product's handlers and train mods, in its order, with the site recorder innermost -------
client = ClientApp()


@client.train(mods=[*train_mods(), _site_recorder])
def _train(msg, context):
    return handle_train(msg, context, site_config(context))


@client.evaluate()
def _evaluate(msg, context):
    return handle_evaluate(msg, context, site_config(context))


# --- the ServerApp: the product's, with spies (record, then call the real code) --------------------------------
_real_gate, _real_fit = server_gate_module.make_server_gate, SecureRecording.aggregate_fit


def _spy_gate(cfg, models, gate_log):
    real = _real_gate(cfg, models, gate_log)

    def hook(rnd, start, agg, pairs, weights):
        torch.save({"round": rnd, "pairs": [(torch.as_tensor(np.array(a)), torch.as_tensor(np.array(b)))
                                            for a, b in pairs], "weights": [float(w) for w in weights]},
                   _folder() / f"gate-{next(_calls)}.pt")
        return real(rnd, start, agg, pairs, weights)

    return hook


def _spy_fit(self, server_round, results, failures):
    replies = [_tensors(parameters_to_ndarrays(res.parameters)) for _, res in results]
    torch.save({"replies": replies}, _folder() / f"fit-{next(_calls)}.pt")
    return _real_fit(self, server_round, results, failures)


driver_module.make_server_gate = _spy_gate  # this process runs only this test's federation
SecureRecording.aggregate_fit = _spy_fit
__all__ = ["client", "server"]
