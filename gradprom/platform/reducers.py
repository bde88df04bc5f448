"""The reducer hook: how gradients are combined across data-parallel workers before the gate decides.

The training step packs everything that needs reducing into one flat buffer (g_e, g_r, the recognizer's
gradient and the losses) and calls the reducer once, so a distributed reducer does one fused all-reduce and
every worker sees the same global gradients and takes the same gate decision. Locally nothing is reduced.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Reducer(Protocol):
    """Average a flat buffer across workers (in place or not) and return it."""

    def __call__(self, buffer: Tensor) -> Tensor: ...


class IdentityReducer:
    """One process: nothing to reduce."""

    def __call__(self, buffer: Tensor) -> Tensor:
        return buffer

    def __repr__(self) -> str:
        return "IdentityReducer()"
