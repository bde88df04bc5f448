"""Store safety (issues 15 and 16): two conversions into one new store both land; the same content is never
added twice unless asked (and `data check` calls duplicates an error); damaged manifests and huge labels are
reported by `data check` and refused by `train`, through the real CLI entry point."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradprom.cli import main
from gradprom.platform.store.check import check_store
from gradprom.platform.store.convert import convert
from gradprom.platform.store.format import MANIFEST, Store

from .test_readers import write_npz


def _convert_after(barrier, src: str, out: str, site: str, results) -> None:
    barrier.wait()  # both start together: the second must wait for the first's lock, not see a half store
    try:
        convert(src, out, site=site, progress=False)
        results.put((site, "ok"))
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put((site, f"{type(e).__name__}: {e}"))


@pytest.mark.slow
def test_two_conversions_into_one_new_store_both_land(tmp_path):
    big = write_npz(tmp_path / "big.npz", n=(3000, 8, 8), side=32, seed=1)  # takes a while: the other waits
    small = write_npz(tmp_path / "small.npz", n=(12, 4, 6), side=32, seed=2)
    ctx = mp.get_context("fork")
    for k in range(3):
        out = tmp_path / f"new{k}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_convert_after, args=(barrier, str(src), str(out), site, results))
                 for src, site in ((big, "A"), (small, "B"))]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        got = dict(results.get(timeout=5) for _ in procs)
        assert got == {"A": "ok", "B": "ok"}, got
        store = Store(out)
        assert sorted(store.sites()) == ["A", "B"] and store.rows() == 3016 + 22
        assert check_store(out).errors == 0


def test_converting_the_same_content_twice_is_refused_unless_allowed(tmp_path, capsys):
    src, store = write_npz(tmp_path / "a.npz"), tmp_path / "st"
    assert main(["data", "convert", str(src), str(store), "--site", "a", "--no-progress"]) == 0
    before = (store / MANIFEST).read_text()

    for site in ("a", "b"):  # the same site again, or the same file under another site name
        assert main(["data", "convert", str(src), str(store), "--site", site, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is already in the store" in err and "site 'a'" in err and "--allow-duplicates" in err
        assert "Traceback" not in err
        assert (store / MANIFEST).read_text() == before  # nothing added
    assert main(["data", "check", str(store)]) == 0

    assert main(["data", "convert", str(src), str(store), "--site", "b", "--no-progress", "--allow-duplicates"]) == 0
    rep = check_store(store)
    dups = [f for f in rep.findings if f.kind == "duplicate"]
    assert dups and all(f.level == "warning" and "--allow-duplicates" in f.message for f in dups)


def test_check_reports_duplicates_as_errors_by_default(tmp_path, capsys):
    rng = np.random.default_rng(5)  # not write_npz's seed 0, whose val images these would repeat
    img = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    images = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
    images[5] = img
    images[7] = img  # one source with an image twice in train: converts (within a source), check fails it
    src = write_npz(tmp_path / "d.npz", train_images=images)
    assert main(["data", "convert", str(src), str(tmp_path / "st"), "--site", "a", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "st")]) == 1
    out = capsys.readouterr().out
    assert "error (duplicate)" in out and "the same image counted twice" in out and "FAILED: 1 errors" in out


@pytest.fixture
def store(tmp_path):
    convert(write_npz(tmp_path / "a.npz"), tmp_path / "st", site="a", progress=False)
    return tmp_path / "st"


def _edit_manifest(store, **fields) -> None:
    m = json.loads((store / MANIFEST).read_text())
    m.update(fields)
    (store / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("edit, text", [
    ({"shape": [1, 16]}, "`shape` is [1, 16]; expected [C, H, W]"),
    ({"version": "2"}, "`version` is '2'; expected a whole number"),
    ({"shape": "16x16"}, "`shape` is 16x16"),
])
def test_malformed_manifest_is_reported_by_check_and_refused_by_train(store, tmp_path, capfd, edit, text):
    _edit_manifest(store, **edit)
    assert main(["data", "check", str(store)]) == 1
    out, err = capfd.readouterr()
    assert text in out and "Traceback" not in out + err
    assert main(["train", "--data", str(store), "--epochs", "1", "--out", str(tmp_path / "runs")]) == 2
    out, err = capfd.readouterr()
    assert text in err and "Traceback" not in err and not (tmp_path / "runs").exists()


def test_huge_label_in_a_store_fails_check_and_train_refuses_before_building_models(store, tmp_path, capfd):
    # a store written before labels were capped: one row labelled 2**40, its part's range saying so
    m = json.loads((store / MANIFEST).read_text())
    part = next(p for p in m["parts"] if p["split"] == "train")
    part["label_max"] = 2**40
    (store / MANIFEST).write_text(json.dumps(m))
    f = store / part["path"]
    t = pq.read_table(f)
    labels = t.column("label").to_pylist()
    labels[0] = 2**40
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.int64())), f)

    assert main(["data", "check", str(store)]) == 1
    out, _ = capfd.readouterr()
    assert "label 1099511627776 would need a recognizer" in out and "at most 1000 classes" in out
    code = main(["train", "--data", str(store), "--epochs", "1", "--out", str(tmp_path / "runs")])
    _, err = capfd.readouterr()
    assert code == 2 and "at most 1000 classes" in err and "Traceback" not in err


def test_check_of_a_file_says_it_is_a_file(tmp_path, capsys):
    src = write_npz(tmp_path / "a.npz")
    assert main(["data", "check", str(src)]) == 1
    out = capsys.readouterr().out
    assert "is a file, not a store" in out and f"gradprom data convert {src} STORE" in out


def test_check_during_a_conversion_never_advises_deleting_its_parts(store):
    from gradprom.platform.data.readers.base import Sample
    from gradprom.platform.store.write import StoreWriter

    img = np.random.default_rng(9).integers(0, 256, (1, 16, 16), dtype=np.uint8)
    with pytest.raises(RuntimeError):
        with StoreWriter(store, "b", {}) as w:  # a conversion in progress: its part is on disk, unlisted
            w.add(Sample(image=img, source="x.png", label=1), "train")
            found = [f for f in check_store(store).findings if f.kind == "orphan"]
            assert found and all("running now" in f.message and "can be deleted" not in f.message for f in found)
            raise RuntimeError("abort the conversion")
    assert not [f for f in check_store(store).findings if f.kind == "orphan"]  # aborted: nothing left
