"""How samples are assigned to train/val/test by `gradprom data convert --split-by` (and by an image folder read
directly, with `auto`):
  auto                   the source's own split (npz keys, a CSV `split` column) where it has one, else random
  source                 the source's own split; a sample without one is an error
  random[:T,V,S]         seeded by (seed, group): fractions T/V/S (default 0.8,0.1,0.1); the slices of one volume
                         or multi-frame file share a group, so they never straddle train and test
  train | val | test     everything into that split (e.g. a held-out hospital as `test`)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gradprom.platform.data.readers.base import SPLITS, Sample
from gradprom.platform.errors import ConfigError, DataError, cut


@dataclass
class SplitRule:
    """How samples are assigned to train/val/test (see the module docstring)."""

    kind: str  # auto | source | random | fixed
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    fixed: str = ""
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> SplitRule:
        """Parse a --split-by value."""
        t = text.strip()
        if t in ("auto", "source"):
            return cls(t, seed=seed)
        if t in SPLITS:
            return cls("fixed", fixed=t, seed=seed)
        if t == "random" or t.startswith("random:"):
            if t == "random":
                return cls("random", seed=seed)
            try:
                fr = tuple(float(v) for v in t.split(":", 1)[1].split(","))
            except ValueError:
                fr = ()
            if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
                raise ConfigError(f"--split-by {cut(text)}: random needs three fractions train,val,test >= 0 "
                                  f"summing to 1, e.g. random:0.8,0.1,0.1.")
            return cls("random", fractions=fr, seed=seed)  # type: ignore[arg-type]
        raise ConfigError(f"--split-by {cut(text)}; expected auto, source, random[:T,V,S], train, val or test.")

    def __call__(self, s: Sample) -> str:
        if self.kind == "fixed":
            return self.fixed
        if s.split and self.kind in ("auto", "source"):
            return s.split
        if self.kind == "source":
            raise DataError(f"{s.source}: no split in the source (no npz key or CSV `split` cell); use "
                            f"--split-by random or a fixed split.")
        digest = hashlib.blake2b(f"{self.seed}|{s.group or s.source}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0 ** 64
        t, v, _ = self.fractions
        return "train" if u < t else "val" if u < t + v else "test"

    def __str__(self) -> str:
        if self.kind == "random":
            return "random:" + ",".join(f"{f:g}" for f in self.fractions)
        return self.fixed or self.kind
