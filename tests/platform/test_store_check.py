"""`gradprom data check` finds each defect in a store the test corrupts on purpose, and passes a clean one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradprom.cli import main
from gradprom.platform.store.check import check_store
from gradprom.platform.store.convert import convert
from gradprom.platform.store.format import Store, content_hash


@pytest.fixture
def store(tmp_path):
    """Float32 images in [0, 1] (so range and NaN can be corrupted), 3 classes, train/val/test."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.random((n, 16, 16)).astype(np.float32)
        arrays[f"{split}_labels"] = np.arange(n) % 3
    np.savez(tmp_path / "f.npz", **arrays)
    convert(tmp_path / "f.npz", tmp_path / "st", site="a", num_classes=3, progress=False)
    return tmp_path / "st"


def _part(store, split="train"):
    return store / [p for p in Store(store).parts if p.split == split][0].path


def _edit_row(f, row: int, rehash: bool = True, **values) -> None:
    """Rewrite one row of a part file (the image given as an array is stored as its bytes)."""
    t = pq.read_table(f).to_pylist()
    if "image" in values and isinstance(values["image"], np.ndarray):
        img = values["image"]
        values["image"] = img.tobytes()
        if rehash:
            values["hash"] = content_hash(img)
    t[row].update(values)
    pq.write_table(pa.Table.from_pylist(t, schema=pq.read_schema(f)), f)


def _image(f, row: int) -> np.ndarray:
    return np.frombuffer(pq.read_table(f).column("image")[row].as_py(), np.float32).reshape(1, 16, 16).copy()


def test_clean_store_passes(store, capsys):
    rep = check_store(store)
    assert rep.errors == 0 and rep.warnings == 0 and sum(rep.rows.values()) == 20
    assert main(["data", "check", str(store), "--strict"]) == 0
    assert "OK: 0 errors, 0 warnings" in capsys.readouterr().out


def _corrupt(store, defect: str) -> None:
    f = _part(store)
    if defect == "schema":
        t = pq.read_table(f)
        pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", t.column("label").cast(pa.string())), f)
    elif defect == "missing":
        f.unlink()
    elif defect == "shape":
        _edit_row(f, 0, height=20)
    elif defect == "bytes":
        _edit_row(f, 0, image=pq.read_table(f).column("image")[0].as_py()[:-4])
    elif defect == "range":
        img = _image(f, 1)
        img[0, 3, 3] = 1.5
        _edit_row(f, 1, image=img)
    elif defect == "nan":
        img = _image(f, 1)
        img[0, 0, 0] = np.nan
        _edit_row(f, 1, image=img)
    elif defect == "hash":
        img = _image(f, 2)
        img[0, 5, 5] = 0.5 if img[0, 5, 5] != 0.5 else 0.25
        _edit_row(f, 2, image=img, rehash=False)
    elif defect in ("label", "negative"):
        _edit_row(f, 3, label=7 if defect == "label" else -1)
    elif defect == "leakage":
        _edit_row(_part(store, "test"), 0, image=_image(f, 4))
    elif defect == "duplicate":
        _edit_row(f, 5, image=_image(f, 4))
    elif defect == "orphan":
        (f.parent / "part-0000dead-0000.parquet").write_bytes(f.read_bytes())


@pytest.mark.parametrize("defect, level, kind, text", [
    ("schema", "error", "partition", "wrong schema (label is string (expected int64))"),
    ("missing", "error", "partition", "is missing"),
    ("shape", "error", "shape", "shape (C, H, W) = (1, 20, 16)"),
    ("bytes", "error", "shape", "1020 image bytes; float32 (1, 16, 16) needs 1024"),
    ("range", "error", "range", "float pixels in [0"),
    ("nan", "error", "nan", "1 NaN/Inf pixels"),
    ("hash", "error", "hash", "does not match its pixels"),
    ("label", "error", "label", "label 7 out of range; expected 0..2"),
    ("negative", "error", "label", "label -1 out of range"),
    ("leakage", "error", "leakage", "the same image is in test and in train"),
    ("duplicate", "error", "duplicate", "duplicate of f.npz#train[4]"),
    ("orphan", "warning", "orphan", "not listed in _store.json"),
])
def test_check_finds_each_defect(store, capsys, defect, level, kind, text):
    _corrupt(store, defect)
    rep = check_store(store)
    found = [f for f in rep.findings if (f.level, f.kind) == (level, kind)]
    assert found and text in found[0].message, rep.findings
    rc = main(["data", "check", str(store)])
    out = capsys.readouterr().out
    assert rc == (1 if level == "error" else 0) and "Traceback" not in out
    if level == "warning":
        assert main(["data", "check", str(store), "--strict"]) == 1


def test_check_of_a_non_store_fails_cleanly(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "no _store.json" in capsys.readouterr().out
