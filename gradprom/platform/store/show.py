"""`gradprom data show`: a PNG grid of sample images, one row per (site, class), written atomically."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gradprom.platform.atomic import atomic_path  # noqa: E402
from gradprom.platform.errors import DataError  # noqa: E402
from gradprom.platform.store.format import Store, decode_images  # noqa: E402
from gradprom.platform.store.write import make_readable  # noqa: E402

MAX_ROWS = 40  # (site, class) rows drawn at most


def pick_samples(store: Store, per_row: int, split: str | None = None) -> dict[tuple[str, object], list[np.ndarray]]:
    """Up to `per_row` images per (site, label), the first in store order; labels only are read first."""
    chosen: dict[tuple[str, object], list[tuple]] = defaultdict(list)
    for part, rg, _ in store.row_groups(store.select(split)):
        labels = store.read_row_group(part, rg, ["label"]).column("label").to_pylist()
        for i, y in enumerate(labels):
            if len(chosen[(part.site, y)]) < per_row:
                chosen[(part.site, y)].append((part, rg, i))
    images: dict[tuple[str, object], list[np.ndarray]] = {}
    cache: dict[tuple[str, int], np.ndarray] = {}
    for key, refs in sorted(chosen.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))[:MAX_ROWS]:
        for part, rg, i in refs:
            if (part.path, rg) not in cache:
                table = store.read_row_group(part, rg, ["image", "dtype", "channels", "height", "width"])
                cache = {(part.path, rg): decode_images(table, store.shape, f"{store.path}/{part.path}")}
            images.setdefault(key, []).append(cache[(part.path, rg)][i])
    return images


def save_grid(store_path: str | Path, out: str | Path, per_row: int = 8, split: str | None = None) -> Path:
    """Draw the grid of `store_path` into the PNG `out`."""
    store = Store(store_path)
    samples = pick_samples(store, per_row, split)
    if not samples:
        raise DataError(f"Store {str(store.path)!r} has no images{f' in split {split!r}' if split else ''} to show.")
    rows = list(samples)
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.3 * per_row + 1.2, 1.35 * len(rows) + 0.4), squeeze=False)
    for r, key in enumerate(rows):
        for j in range(per_row):
            ax = axes[r, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(samples[key]):
                img = np.clip(samples[key][j], 0, 1)
                ax.imshow(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1), cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                ax.axis("off")
        site, label = key
        axes[r, 0].set_ylabel(f"{site}\n{'no label' if label is None else f'class {label}'}", fontsize=8)
    fig.suptitle(f"{store.path.name}: {store.rows()} images, shape {store.shape}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
        make_readable(tmp)
    plt.close(fig)
    return out
