"""Fault injection for tests and drills (`federated.faults`): a Flower client mod, kept out of the ClientApp's
own handlers. A fault names a site and a round and is one of
  crash   the site raises before training (the round goes on without it)
  hang    the site sleeps past the round timeout, then trains (its late reply is dropped)
  nan     the site trains, then replies with NaN weights (the strategy rejects them)
A simulation whose config lists no faults gets no mod at all; the module-level app (`flwr run`, SuperNodes)
reads the run config per message and passes straight through when no fault matches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from .config import build_federation
from .partition import site_name
from .secagg_site import LEGACY_FIT_REPLY, is_legacy, replace_vector, reply_vector
from .strategy import from_record, to_record


def fault_mod(config_of: Callable[[Context], dict[str, Any]]) -> Mod:
    """A train mod that applies the fault configured for this site and round (config from `config_of`)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        _, fed = build_federation(config_of(context), source="federation config")
        k = int(context.node_config["partition-id"])
        records = msg.content.config_records
        conf = records["config"] if "config" in records else records["fitins.config"]  # Message API / SecAgg+
        rnd = int(conf["server-round"]) + int(conf.get("round-offset", 0))
        kind = next((f.kind for f in fed.faults if f.site == k and f.round == rnd), None)
        if kind == "crash":
            raise RuntimeError(f"{site_name(k)}: injected crash (federated.faults) in round {rnd}")
        if kind == "hang":
            time.sleep(fed.round_timeout_s + 5)
        reply = call_next(msg, context)
        if kind == "nan" and reply.has_content() and is_legacy(reply.content, LEGACY_FIT_REPLY):
            replace_vector(reply, [v * float("nan") for v in reply_vector(reply)])
        elif kind == "nan" and reply.has_content():
            arrays = from_record(reply.content["arrays"])
            reply.content["arrays"] = to_record({n: a * float("nan") if a.dtype.kind == "f" else a
                                                 for n, a in arrays.items()})
        return reply

    return mod
