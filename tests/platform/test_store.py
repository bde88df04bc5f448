"""The store: atomic publication (a failed conversion leaves nothing), manifest-only reading, damaged stores as
clean errors, the Ray/pyarrow view, and the streaming dataset (one full epoch, seeded order, same items and
noise as the in-memory path)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gradprom.platform.build import train_loader
from gradprom.platform.config import build_config
from gradprom.platform.data.dataset import EnhancementDataset
from gradprom.platform.data.sources import build_datasets, load_splits
from gradprom.platform.errors import DataError
from gradprom.platform.store.check import fingerprint
from gradprom.platform.store.convert import convert
from gradprom.platform.store.format import MANIFEST, Store
from gradprom.platform.store.load import load_store_splits
from gradprom.platform.store.stream import StreamingEnhancementDataset

from .test_readers import write_npz, write_png_folder


@pytest.fixture
def store(tmp_path):
    """Two sites of 40/8/8 uint8 images, in row groups of 5 rows (so streaming crosses many groups)."""
    import gradprom.platform.store.write as sw

    old = sw.ROW_GROUP_BYTES
    sw.ROW_GROUP_BYTES = 5 * 16 * 16
    try:
        for site, seed in (("a", 1), ("b", 2)):
            convert(write_npz(tmp_path / f"{site}.npz", n=(40, 8, 8), seed=seed), tmp_path / "st", site=site,
                    progress=False)
    finally:
        sw.ROW_GROUP_BYTES = old
    return tmp_path / "st"


def _cfg(src, **data):
    return build_config({"task": "classification", "seed": 3,
                         "data": {"source": str(src), "batch_size": 7, "degradation": "gaussian:sigma=0.1", **data}})


# ---------------------------------------------------------------------------------------------------------
# atomic publication
def test_failed_conversion_leaves_no_store_and_no_trace(tmp_path, store):
    folder = write_png_folder(tmp_path / "png", n=8)
    (folder / "img5.png").write_bytes((folder / "img5.png").read_bytes()[:60])  # truncated in the middle
    with pytest.raises(DataError, match=r"labels\.csv row 7.*img5\.png"):
        convert(folder, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    fp = fingerprint(store)
    with pytest.raises(DataError, match="img5.png"):
        convert(folder, store, site="c", progress=False)
    assert fingerprint(store) == fp and not list(store.glob("site=c*"))


def test_only_listed_parts_are_read_and_a_half_store_is_refused(tmp_path, store):
    # a part left by an interrupted conversion is not part of the store
    stray = store / "site=a/split=train/part-deadbeef-0000.parquet"
    stray.write_bytes((store / Store(store).parts[0].path).read_bytes())
    assert Store(store).rows("train", ["a"]) == 40
    sets, _ = load_store_splits(_cfg(store, sites=["a"]))
    assert len(sets["train"]) == 40
    (store / MANIFEST).unlink()  # parts without a manifest: not a complete store
    with pytest.raises(DataError, match="no _store.json: it is incomplete"):
        load_splits(_cfg(store))


@pytest.mark.parametrize("damage, match", [
    ("missing", r"partition file 'site=b/split=test/.*' \(site 'b', split 'test'\) is missing"),
    ("schema", r"wrong schema \(missing columns \['hash'\]"),
    ("manifest", "not valid JSON"),
])
def test_damaged_store_is_a_clean_error(store, damage, match):
    part = [p for p in Store(store).parts if (p.site, p.split) == ("b", "test")][0]
    f = store / part.path
    if damage == "missing":
        f.unlink()
    elif damage == "schema":
        pq.write_table(pq.read_table(f).drop(["hash"]), f)
    else:
        (store / MANIFEST).write_text("{broken")
    with pytest.raises(DataError, match=match):
        load_splits(_cfg(store))


def test_arrow_view_has_site_and_split_columns(store):
    t = Store(store).arrow_dataset("test").to_table(columns=["site", "split", "label"])
    assert t.num_rows == 16 and set(t.column("site").to_pylist()) == {"a", "b"}
    assert set(t.column("split").to_pylist()) == {"test"}
    assert pa.types.is_int64(t.schema.field("label").type)


# ---------------------------------------------------------------------------------------------------------
# streaming
def test_streaming_epoch_covers_every_row_once_in_a_seeded_order(store):
    datasets, info, _ = build_datasets(_cfg(store, streaming="on", shuffle_buffer=8))
    ds = datasets["train"]
    assert isinstance(ds, StreamingEnhancementDataset) and len(ds) == 80 and info.num_classes == 3
    orders = []
    for epoch in (0, 1, 0):
        loader = train_loader(ds, _cfg(store), epoch)
        idx = torch.cat([b["index"] for b in loader]).tolist()
        assert sorted(idx) == list(range(80)) and len(loader) == 12
        orders.append(idx)
    assert orders[0] == orders[2] and orders[0] != orders[1] and orders[0] != sorted(orders[0])


def test_streamed_items_equal_the_in_memory_ones(store):
    cfg = _cfg(store)
    streamed, _, _ = build_datasets(cfg.model_copy(update={"data": cfg.data.model_copy(update={"streaming": "on"})}))
    memory, _, _ = build_datasets(cfg.model_copy(update={"data": cfg.data.model_copy(update={"streaming": "off"})}))
    assert isinstance(memory["val"], EnhancementDataset)
    for split in ("val", "test"):  # val/test stream in store order, with the same per-index noise
        items = list(streamed[split])
        assert len(items) == len(memory[split]) == 16
        for it in items:
            ref = memory[split][it["index"]]
            for k in ("x_hq", "x_lq", "y"):
                assert torch.equal(it[k], ref[k]), (split, k)
    memory["train"].set_epoch(2)
    streamed["train"].set_epoch(2)
    for it in list(streamed["train"])[:10]:  # train: another order, but each row's noise is its own
        assert torch.equal(it["x_lq"], memory["train"][it["index"]]["x_lq"])


def test_store_without_val_holds_out_the_same_rows_both_ways(tmp_path):
    npz = write_npz(tmp_path / "m.npz", n=(30, 0, 6), val_images=None, val_labels=None)
    raw = dict(np.load(npz))
    np.savez(npz, **{k: v for k, v in raw.items() if not k.startswith("val_")})
    convert(npz, tmp_path / "st", progress=False)
    mem, _ = load_store_splits(_cfg(tmp_path / "st"))
    streamed, _, _ = build_datasets(_cfg(tmp_path / "st", streaming="on"))
    assert len(mem["val"]) == len(streamed["val"]) >= 1 and len(mem["train"]) + len(mem["val"]) == 30
    got = torch.stack([it["x_hq"] for it in streamed["val"]]).numpy()
    np.testing.assert_array_equal(got, mem["val"].images)


def test_auto_streams_a_store_over_the_limit(store):
    datasets, _, _ = build_datasets(_cfg(store, stream_above_mb=0.01))
    assert isinstance(datasets["train"], StreamingEnhancementDataset)
    datasets, _, _ = build_datasets(_cfg(store))
    assert isinstance(datasets["train"], EnhancementDataset)


def test_manifest_records_provenance(store):
    m = json.loads((store / MANIFEST).read_text())
    c = m["converts"][0]
    assert c["format"] == "medmnist" and c["reader"] == "gradprom.medmnist" and c["source"].endswith("a.npz")
    assert c["options"]["split_by"] == "auto" and c["sites"] == ["a"]
    assert c["rows"] == {"a/train": 40, "a/val": 8, "a/test": 8}
    assert set(m["schema"]) == {"image", "dtype", "channels", "height", "width", "label", "mask", "source", "hash"}
