"""The one hold-out rule and the one epoch runner: the same images get the same validation split however they
are stored (npz, store in memory, store streamed), and a resumed local run restores what a Ray worker restores
(models, optimizers, the epoch, the step rows, and the step's own counter)."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.platform.config import build_config
from gradprom.platform.data.holdout import holdout_mask, split_holdout
from gradprom.platform.data.npz import load_npz
from gradprom.platform.data.sources import build_datasets, load_splits
from gradprom.platform.errors import DataError
from gradprom.platform.rundir import RunDir
from gradprom.platform.store.convert import convert

from .test_readers import write_npz


def test_holdout_takes_the_stated_share_and_never_all_or_none():
    for n, frac in ((2, 0.5), (10, 0.1), (10, 0.01), (10, 0.99), (101, 0.2)):
        m = holdout_mask(n, frac, seed=4)
        assert m.sum() == min(max(1, round(n * frac)), n - 1)
        assert np.array_equal(m, holdout_mask(n, frac, seed=4))  # seeded
    assert not np.array_equal(holdout_mask(100, 0.2, 0), holdout_mask(100, 0.2, 1))
    with pytest.raises(DataError, match="too few"):
        holdout_mask(1, 0.5, 0)


def _no_val_npz(tmp_path):
    src = write_npz(tmp_path / "a.npz", n=(30, 1, 6), seed=5)
    arrays = dict(np.load(src))
    for k in ("val_images", "val_labels"):
        arrays.pop(k)
    np.savez(src, **arrays)
    return src


def test_npz_and_the_store_made_from_it_hold_out_the_same_images(tmp_path):
    src = _no_val_npz(tmp_path)
    convert(src, tmp_path / "st", site="a", progress=False)
    cfg = lambda source, **data: build_config({"seed": 7, "data": {"source": str(source), "val_fraction": 0.2,  # noqa: E731
                                                                   **data}})
    npz_sets, _ = load_npz(src, "classification", 0.2, 7)
    store_sets, _ = load_splits(cfg(tmp_path / "st"))
    assert len(npz_sets["val"]) == len(store_sets["val"]) == 6
    assert np.array_equal(npz_sets["val"].images, store_sets["val"].images)
    assert np.array_equal(npz_sets["train"].images, store_sets["train"].images)
    # streamed: the same hold-out, read by row groups
    streamed, _, _ = build_datasets(cfg(tmp_path / "st", streaming="on"))
    got = np.stack([streamed["val"].__iter__().__next__()["x_hq"].numpy()])
    assert np.array_equal(got[0], store_sets["val"].images[0])
    train, val = split_holdout(npz_sets["train"], 0.5, 7)  # subset keeps labels with their images
    assert len(train) + len(val) == len(npz_sets["train"]) and val.labels is not None


@pytest.mark.slow
def test_resumed_local_run_restores_the_step_counter_and_the_rows(tmp_path):
    from gradprom.platform.epoch import EpochRunner
    from gradprom.platform.loop import train

    raw = {"seed": 2, "data": {"num_train": 16, "num_val": 4, "num_test": 4, "image_size": 32, "batch_size": 8},
           "model": {"enhancer_channels": [4, 8], "recognizer_channels": [4, 8]},
           "optim": {"epochs": 1}, "run": {"out": str(tmp_path), "name": "r", "device": "cpu", "num_threads": 1,
                                           "figures_every_epoch": False}}
    path = train(build_config(raw), progress=False)
    seen = {}
    original = EpochRunner.resume

    def spy(self, state, where):
        original(self, state, where)
        seen.update(step=self.step.steps_done, epoch=self.p.epoch, rows=len(self.p.rows))

    EpochRunner.resume = spy
    try:
        raw["optim"]["epochs"] = 2
        train(build_config(raw), resume=True, run_path=path, progress=False)
    finally:
        EpochRunner.resume = original
    assert seen == {"step": 2, "epoch": 1, "rows": 2}  # 2 steps of epoch 0, its train and val rows
    run = RunDir(path)
    steps = run.read_steps().column("step").to_pylist()
    assert steps == [1, 2, 3, 4] and run.read_run()["steps"] == 4
