"""Bytes on the wire per site message, for measuring a federation (`benchmarks/federated_round.py`).

With GRADPROM_MESSAGE_BYTES_LOG=<file> in the environment of `gradprom federate` (the simulation's Ray actors
inherit it), every ClientApp appends one line per message it handles: the serialised size (Flower's protobuf,
as it goes over the wire) of the content it received and of its reply. Unset, the ClientApp has no such mod.
Not Flower's message_size_mod: its `count_bytes` fails on SecAgg+'s empty lists.
"""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

ENV = "GRADPROM_MESSAGE_BYTES_LOG"


def message_bytes_mod() -> Mod | None:
    """The counting mod (outermost) when GRADPROM_MESSAGE_BYTES_LOG is set, else None."""
    path = os.environ.get(ENV)
    if not path:
        return None
    from flwr.common.serde import recorddict_to_proto

    def count(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        down = recorddict_to_proto(msg.content).ByteSize()
        up = recorddict_to_proto(reply.content).ByteSize() if reply.has_content() else 0
        with open(path, "a") as f:
            f.write(f"{down} {up}\n")
        return reply

    return count
