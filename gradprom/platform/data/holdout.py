"""The one validation hold-out rule, for every source that has no validation split of its own (an .npz without
`val_*`, an image folder without a `split` column, a store without a val partition; in memory or streamed).

Row i of the train split draws u_i from a generator seeded with (seed, 0x5EED); the round(n * fraction)
rows with the smallest u_i (at least one, never all) are the validation split. It depends only on the seed,
the fraction and the number of rows, never on how the images are stored, so the same images get the same
split from an .npz, a folder or the store converted from either (in the same order). Recorded in run.json as
`holdout: "v2"` (v1 used a permutation for npz/folders and a threshold for stores, which disagreed).
"""

from __future__ import annotations

import numpy as np

from gradprom.platform.data.dataset import ImageSet
from gradprom.platform.errors import DataError

HOLDOUT_RULE = "v2"


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the n train rows held out as validation (see the module docstring)."""
    if n < 2:
        raise DataError(f"the train split has {n} images; too few to hold out a validation split.")
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    u = np.random.default_rng([seed, 0x5EED]).random(n)
    mask = np.zeros(n, bool)
    mask[np.argsort(u, kind="stable")[:n_val]] = True
    return mask


def split_holdout(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(train without the hold-out, the hold-out), both in the original order."""
    mask = holdout_mask(len(train), fraction, seed)
    return train.subset(~mask), train.subset(mask)
