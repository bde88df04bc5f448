"""Datasets: MedMNIST .npz loading and validation, the degrading EnhancementDataset, build_datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gradprom.platform.config import build_config
from gradprom.platform.data.dataset import DataInfo, EnhancementDataset, ImageSet
from gradprom.platform.data.degradations import parse_degradation
from gradprom.platform.data.npz import load_npz
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.errors import DataError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def gray_uint8(n: int, side: int = 28, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, size=(n, side, side), dtype=np.uint8)


def labels_col(n: int, k: int = 3, seed: int = 0) -> np.ndarray:
    """MedMNIST style (N, 1) uint8 labels covering 0..k-1."""
    return (np.arange(n) % k).astype(np.uint8)[:, None]


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def medmnist_gray(tmp_path: Path, name: str = "gray.npz", **override) -> Path:
    arrays = {
        "train_images": gray_uint8(10, seed=1), "train_labels": labels_col(10),
        "val_images": gray_uint8(4, seed=2), "val_labels": labels_col(4),
        "test_images": gray_uint8(5, seed=3), "test_labels": labels_col(5),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    return write_npz(tmp_path / name, **arrays)


# ================================================================ valid files
def test_grayscale_uint8_medmnist(tmp_path):
    p = medmnist_gray(tmp_path)
    raw = np.load(p)
    sets, info = load_npz(p, "classification")
    assert set(sets) == {"train", "val", "test"}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [10, 4, 5]
    for split, d in sets.items():
        assert d.images.shape == (len(d), 1, 28, 28)
        assert d.images.dtype == np.float32
        np.testing.assert_allclose(d.images[:, 0], raw[f"{split}_images"].astype(np.float32) / 255.0, rtol=0, atol=1e-7)
        assert d.labels.shape == (len(d),) and d.labels.dtype == np.int64
        np.testing.assert_array_equal(d.labels, raw[f"{split}_labels"][:, 0])
        assert d.masks is None
    assert sets["train"].images.min() >= 0.0 and sets["train"].images.max() <= 1.0
    assert isinstance(info, DataInfo)
    assert info.channels == 1 and info.image_size == (28, 28) and info.num_classes == 3
    assert info.seg_classes == 0 and info.source == str(p)
    assert info.num_outputs("classification") == 3


def test_uint8_extremes_scale_to_zero_and_one(tmp_path):
    imgs = np.zeros((4, 16, 16), np.uint8)
    imgs[0] = 255
    p = write_npz(tmp_path / "x.npz", train_images=imgs, train_labels=np.array([0, 1, 0, 1]),
                  val_images=imgs, val_labels=np.array([0, 1, 0, 1]),
                  test_images=imgs, test_labels=np.array([0, 1, 0, 1]))
    sets, _ = load_npz(p, "classification")
    assert sets["train"].images[0].min() == 1.0 and sets["train"].images[1].max() == 0.0


def test_rgb_uint8(tmp_path):
    rgb = lambda n, s: _rng(s).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    p = write_npz(tmp_path / "rgb.npz",
                  train_images=rgb(6, 1), train_labels=labels_col(6, k=4),
                  val_images=rgb(2, 2), val_labels=labels_col(2),
                  test_images=rgb(3, 3), test_labels=labels_col(3))
    raw = np.load(p)
    sets, info = load_npz(p, "classification")
    assert sets["train"].images.shape == (6, 3, 32, 32)
    # channel c of image i is the HWC array's [..., c]
    np.testing.assert_allclose(sets["train"].images[2, 1], raw["train_images"][2, :, :, 1] / 255.0, atol=1e-7)
    assert info.channels == 3 and info.image_size == (32, 32)
    assert info.num_classes == 4  # max label (3, in train) + 1


def test_single_channel_last_axis(tmp_path):
    imgs = gray_uint8(4, side=20)[..., None]  # (N, H, W, 1)
    p = write_npz(tmp_path / "c1.npz", train_images=imgs, train_labels=labels_col(4, 2),
                  test_images=imgs, test_labels=labels_col(4, 2))
    sets, info = load_npz(p, "classification", val_fraction=0.25)
    assert sets["test"].images.shape == (4, 1, 20, 20) and info.channels == 1


def test_float_images_in_unit_range_pass_through(tmp_path):
    f = _rng(4).random((5, 24, 24)).astype(np.float64)
    f[0, 0, 0], f[0, 0, 1] = 0.0, 1.0
    p = write_npz(tmp_path / "f.npz", train_images=f, train_labels=np.arange(5) % 2,
                  val_images=f[:2], val_labels=np.array([0, 1]), test_images=f[:3], test_labels=np.array([1, 0, 1]))
    sets, info = load_npz(p, "classification")
    assert sets["train"].images.dtype == np.float32
    np.testing.assert_allclose(sets["train"].images[:, 0], f.astype(np.float32))
    assert info.num_classes == 2


def test_uint16_images_scale_by_65535(tmp_path):
    u = np.full((3, 16, 16), 65535, np.uint16)
    u[1] = 0
    p = write_npz(tmp_path / "u16.npz", train_images=u, train_labels=np.array([0, 1, 1]),
                  val_images=u, val_labels=np.array([0, 1, 1]), test_images=u, test_labels=np.array([0, 1, 1]))
    sets, _ = load_npz(p, "classification")
    assert sets["val"].images[0].min() == 1.0 and sets["val"].images[1].max() == 0.0


def test_labels_flat_and_float_integral_labels_accepted(tmp_path):
    p = medmnist_gray(tmp_path, train_labels=np.arange(10) % 3,  # (N,) int64
                      val_labels=np.array([0.0, 1.0, 2.0, 1.0]))  # (N,) float holding integers
    sets, info = load_npz(p, "classification")
    assert sets["train"].labels.dtype == np.int64 and sets["val"].labels.dtype == np.int64
    np.testing.assert_array_equal(sets["val"].labels, [0, 1, 2, 1])


def test_num_classes_counts_the_largest_label_in_any_split(tmp_path):
    p = medmnist_gray(tmp_path, test_labels=np.array([[0], [1], [6], [0], [1]], np.uint8))
    _, info = load_npz(p, "classification")
    assert info.num_classes == 7


@pytest.mark.parametrize("fraction,n_val", [(0.1, 2), (0.25, 5), (0.5, 10), (0.01, 1)])
def test_missing_val_is_held_out_from_train(tmp_path, fraction, n_val):
    train = gray_uint8(20, side=16, seed=7)
    labels = np.arange(20) % 4
    p = write_npz(tmp_path / "noval.npz", train_images=train, train_labels=labels,
                  test_images=gray_uint8(3, side=16), test_labels=np.array([0, 1, 2]))
    sets, info = load_npz(p, "classification", val_fraction=fraction, seed=0)
    assert len(sets["val"]) == n_val and len(sets["train"]) == 20 - n_val
    assert len(sets["test"]) == 3
    # a partition of the original train split: every image exactly once, labels kept with their images
    all_imgs = np.concatenate([sets["train"].images, sets["val"].images])[:, 0]
    all_labels = np.concatenate([sets["train"].labels, sets["val"].labels])
    order = [int(np.flatnonzero((train.astype(np.float32) / 255.0 == im).all(axis=(1, 2)))[0]) for im in all_imgs]
    assert sorted(order) == list(range(20))
    np.testing.assert_array_equal(all_labels, labels[order])
    assert info.num_classes == 4


def test_held_out_val_depends_on_seed_only(tmp_path):
    p = write_npz(tmp_path / "noval.npz", train_images=gray_uint8(20, side=16), train_labels=np.arange(20) % 2,
                  test_images=gray_uint8(3, side=16), test_labels=np.array([0, 1, 0]))
    a, _ = load_npz(p, "classification", val_fraction=0.25, seed=1)
    b, _ = load_npz(p, "classification", val_fraction=0.25, seed=1)
    c, _ = load_npz(p, "classification", val_fraction=0.25, seed=2)
    np.testing.assert_array_equal(a["val"].images, b["val"].images)
    assert not np.array_equal(a["val"].images, c["val"].images)


def test_segmentation_with_masks(tmp_path):
    def masks(n, seed):
        return _rng(seed).integers(0, 3, size=(n, 28, 28)).astype(np.uint8)
    p = write_npz(tmp_path / "seg.npz",
                  train_images=gray_uint8(6), train_masks=masks(6, 1),
                  val_images=gray_uint8(2), val_masks=masks(2, 2),
                  test_images=gray_uint8(3), test_masks=masks(3, 3))
    raw = np.load(p)
    sets, info = load_npz(p, "segmentation")
    for split, d in sets.items():
        assert d.masks.shape == (len(d), 28, 28) and d.masks.dtype == np.int64
        np.testing.assert_array_equal(d.masks, raw[f"{split}_masks"])
        assert d.labels is None
    assert info.seg_classes == 3 and info.num_classes == 0
    assert info.num_outputs("segmentation") == 3


def test_segmentation_without_val_splits_masks_with_images(tmp_path):
    imgs = gray_uint8(10, side=16)
    m = (imgs > 127).astype(np.int64)  # masks derived from the images, so pairing is checkable
    p = write_npz(tmp_path / "seg2.npz", train_images=imgs, train_masks=m, test_images=imgs[:2], test_masks=m[:2])
    sets, info = load_npz(p, "segmentation", val_fraction=0.2)
    for s in ("train", "val"):
        np.testing.assert_array_equal(sets[s].masks, (sets[s].images[:, 0] > 127 / 255.0).astype(np.int64))
    assert info.seg_classes == 2


# ================================================================ bad files
def _truncated(tmp_path: Path) -> Path:
    p = medmnist_gray(tmp_path, name="trunc.npz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _text(tmp_path: Path) -> Path:
    p = tmp_path / "notes.npz"
    p.write_text("these are not the arrays you are looking for\n" * 20)
    return p


def _arrays(**override):
    """Builder for a file whose arrays are the valid grayscale set with some replaced (None removes)."""
    return lambda tmp_path: medmnist_gray(tmp_path, name="bad.npz", **override)


_nan = np.full((10, 28, 28), 0.5, np.float32)
_nan[3, 4, 5] = np.nan
_big = np.full((10, 28, 28), 0.5, np.float32)
_big[0, 0, 0] = 255.0
_neg_labels = labels_col(10).astype(np.int64)
_neg_labels[7, 0] = -1

BAD = [
    # id, file builder, task, substrings the message must contain
    ("missing", lambda t: t / "nope.npz", "classification", ["nope.npz", "does not exist", ".npz"]),
    ("truncated", _truncated, "classification", ["trunc.npz", "could not be read as .npz", "truncated"]),
    ("not-a-zip", _text, "classification", ["notes.npz", "could not be read as .npz"]),
    ("no-train-images", _arrays(train_images=None, train_labels=None), "classification",
     ["bad.npz", "no `train_images` array", "test_images"]),
    ("no-test-images", _arrays(test_images=None, test_labels=None), "classification",
     ["bad.npz", "no `test_images` array"]),
    ("ndim-1", _arrays(train_images=np.zeros(10, np.uint8)), "classification",
     ["bad.npz", "`train_images`", "(10,)", "expected (N, H, W)"]),
    ("two-channels", _arrays(train_images=np.zeros((10, 28, 28, 2), np.uint8)), "classification",
     ["bad.npz", "`train_images`", "(10, 28, 28, 2)", "C = 1", "3 (RGB)"]),
    ("tiny-images", _arrays(val_images=np.zeros((4, 4, 4), np.uint8)), "classification",
     ["`val_images`", "4x4", "at least 8x8"]),
    ("nan-pixels", _arrays(train_images=_nan), "classification",
     ["bad.npz", "`train_images`", "NaN", "image 3"]),
    ("float-out-of-range", _arrays(train_images=_big), "classification",
     ["bad.npz", "`train_images`", "[0.5, 255]", "[0, 1]"]),
    ("int32-images", _arrays(test_images=np.zeros((5, 28, 28), np.int32)), "classification",
     ["`test_images`", "int32", "uint8"]),
    ("label-count", _arrays(train_labels=labels_col(9)), "classification",
     ["bad.npz", "`train_labels`", "9 labels for 10 images"]),
    ("negative-label", _arrays(train_labels=_neg_labels), "classification",
     ["bad.npz", "`train_labels`", "label -1 at index 7", "0..K-1"]),
    ("multi-label", _arrays(val_labels=np.zeros((4, 14), np.uint8)), "classification",
     ["bad.npz", "`val_labels`", "(4, 14)", "multi-label", "(N,) or (N, 1)"]),
    ("fractional-label", _arrays(val_labels=np.array([0.0, 0.5, 1.0, 2.0])), "classification",
     ["`val_labels`", "non-integer"]),
    ("empty-split", _arrays(val_images=np.zeros((0, 28, 28), np.uint8), val_labels=np.zeros((0, 1), np.uint8)),
     "classification", ["bad.npz", "`val_images`", "empty", "at least one image"]),
    ("no-labels", _arrays(test_labels=None), "classification",
     ["bad.npz", "`test_images` but no `test_labels`"]),
    ("seg-without-masks", _arrays(), "segmentation", ["bad.npz", "no `train_masks` array", "(N, H, W)"]),
    ("mask-shape", _arrays(train_masks=np.zeros((10, 27, 28), np.uint8), val_masks=np.zeros((4, 28, 28), np.uint8),
                           test_masks=np.zeros((5, 28, 28), np.uint8)), "segmentation",
     ["`train_masks`", "(10, 27, 28)", "(10, 28, 28)"]),
    ("single-class", _arrays(train_labels=np.zeros((10, 1), np.uint8), val_labels=np.zeros((4, 1), np.uint8),
                             test_labels=np.zeros((5, 1), np.uint8)), "classification",
     ["bad.npz", "single class", "at least two"]),
    ("mixed-shapes", _arrays(test_images=gray_uint8(5, side=32)), "classification",
     ["bad.npz", "mixes image shapes"]),
]


@pytest.mark.parametrize("make,task,needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_npz_raises_data_error_naming_file_and_expectation(tmp_path, make, task, needles):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_npz(path, task)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert "\n" not in msg  # one paragraph for the CLI


def test_too_small_train_split_to_hold_out_val(tmp_path):
    p = write_npz(tmp_path / "one.npz", train_images=gray_uint8(1), train_labels=np.array([1]),
                  test_images=gray_uint8(2), test_labels=np.array([0, 1]))
    with pytest.raises(DataError, match="too few to hold out a validation split"):
        load_npz(p, "classification")


# ================================================================ EnhancementDataset
def _imageset(n: int = 6, side: int = 16) -> ImageSet:
    imgs = _rng(0).random((n, 1, side, side)).astype(np.float32)
    masks = (imgs[:, 0] > 0.5).astype(np.int64)
    return ImageSet(imgs, np.arange(n, dtype=np.int64) % 2, masks)


def test_items_have_the_documented_keys():
    data = _imageset()
    ds = EnhancementDataset(data, parse_degradation("gaussian"), "classification", seed=0, split="train")
    assert len(ds) == 6
    item = ds[2]
    assert set(item) == {"x_lq", "x_hq", "y", "index"}
    assert item["index"] == 2
    assert torch.equal(item["x_hq"], torch.from_numpy(data.images[2]))
    assert item["x_lq"].shape == item["x_hq"].shape == (1, 16, 16)
    assert item["x_lq"].dtype == torch.float32
    assert int(item["y"]) == 0 and item["y"].dtype == torch.int64
    assert not torch.equal(item["x_lq"], item["x_hq"])


def test_segmentation_items_carry_masks():
    data = _imageset()
    ds = EnhancementDataset(data, parse_degradation("gaussian"), "segmentation", seed=0, split="val")
    assert torch.equal(ds[3]["y"], torch.from_numpy(data.masks[3]))


def test_x_lq_is_a_function_of_seed_epoch_index():
    data = _imageset()
    deg = parse_degradation("gaussian")
    a = EnhancementDataset(data, deg, "classification", seed=5, split="train")
    b = EnhancementDataset(data, deg, "classification", seed=5, split="train")
    c = EnhancementDataset(data, deg, "classification", seed=6, split="train")
    a.set_epoch(3)
    b.set_epoch(3)
    c.set_epoch(3)
    assert torch.equal(a[1]["x_lq"], b[1]["x_lq"])
    assert torch.equal(a[1]["x_lq"], a[1]["x_lq"])  # repeated reads agree
    assert not torch.equal(a[1]["x_lq"], c[1]["x_lq"])  # seed matters
    assert not torch.equal(a[1]["x_lq"] - a[1]["x_hq"], a[2]["x_lq"] - a[2]["x_hq"])  # index matters
    # independent of access order (batching / workers)
    order1 = [a[i]["x_lq"] for i in range(6)]
    order2 = [b[i]["x_lq"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(u, v) for u, v in zip(order1, order2))


def test_train_noise_changes_with_epoch_and_returns():
    ds = EnhancementDataset(_imageset(), parse_degradation("gaussian"), "classification", seed=0, split="train")
    ds.set_epoch(0)
    e0 = ds[0]["x_lq"].clone()
    ds.set_epoch(1)
    e1 = ds[0]["x_lq"].clone()
    assert not torch.equal(e0, e1)
    ds.set_epoch(0)
    assert torch.equal(ds[0]["x_lq"], e0)


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_noise_is_fixed_across_epochs(split):
    ds = EnhancementDataset(_imageset(), parse_degradation("gaussian"), "classification", seed=0, split=split)
    ds.set_epoch(0)
    e0 = ds[4]["x_lq"].clone()
    ds.set_epoch(7)
    assert torch.equal(ds[4]["x_lq"], e0)


def test_splits_draw_different_noise():
    data = _imageset()
    deg = parse_degradation("gaussian")
    val = EnhancementDataset(data, deg, "classification", seed=0, split="val")
    test = EnhancementDataset(data, deg, "classification", seed=0, split="test")
    assert not torch.equal(val[0]["x_lq"], test[0]["x_lq"])


def test_sr2_halves_the_input_side():
    ds = EnhancementDataset(_imageset(side=16), parse_degradation("sr2"), "classification", seed=0, split="train")
    item = ds[0]
    assert item["x_hq"].shape == (1, 16, 16)
    assert item["x_lq"].shape == (1, 8, 8)


def test_missing_targets_raise():
    no_labels = ImageSet(_imageset().images, None, None)
    with pytest.raises(DataError, match="no labels"):
        EnhancementDataset(no_labels, parse_degradation("none"), "classification", seed=0, split="train")
    with pytest.raises(DataError, match="`val_masks`"):
        EnhancementDataset(no_labels, parse_degradation("none"), "segmentation", seed=0, split="val")


# ================================================================ build_datasets
_SMALL = {"num_train": 8, "num_val": 4, "num_test": 4, "image_size": 32}


def test_build_datasets_phantoms_classification():
    cfg = build_config({"data": dict(_SMALL, degradation="gaussian:sigma=0.05")})
    sets, info, deg = build_datasets(cfg)
    assert set(sets) == {"train", "val", "test"}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    assert info.channels == 1 and info.image_size == (32, 32) and info.num_classes == 3
    assert info.source == "phantoms"
    assert deg.scale == 1 and str(deg) == "gaussian:sigma=0.05"
    item = sets["train"][0]
    assert item["x_hq"].shape == item["x_lq"].shape == (1, 32, 32)
    assert 0 <= int(item["y"]) < 3
    # the splits come from disjoint phantom indices
    tr = sets["train"].images.numpy()
    te = sets["test"].images.numpy()
    assert not any(np.array_equal(a, b) for a in tr for b in te)
    assert all(ds.split == s for s, ds in sets.items())


def test_build_datasets_phantoms_segmentation_sr2():
    cfg = build_config({"task": "segmentation", "data": dict(_SMALL, degradation="sr2")})
    sets, info, deg = build_datasets(cfg)
    assert deg.scale == 2 and info.seg_classes == 3 and info.num_outputs("segmentation") == 3
    item = sets["val"][1]
    assert item["x_lq"].shape == (1, 16, 16) and item["y"].shape == (32, 32)
    assert set(torch.unique(item["y"]).tolist()) <= {0, 1, 2}


def test_build_datasets_is_reproducible_from_the_seed():
    a, _, _ = build_datasets(build_config({"seed": 3, "data": _SMALL}))
    b, _, _ = build_datasets(build_config({"seed": 3, "data": _SMALL}))
    assert torch.equal(a["test"][2]["x_lq"], b["test"][2]["x_lq"])


def _npz_side(tmp_path: Path, side: int) -> Path:
    return write_npz(tmp_path / f"side{side}.npz",
                     train_images=gray_uint8(6, side=side), train_labels=labels_col(6, 2),
                     val_images=gray_uint8(2, side=side), val_labels=labels_col(2, 2),
                     test_images=gray_uint8(2, side=side), test_labels=labels_col(2, 2))


def test_build_datasets_npz(tmp_path):
    p = _npz_side(tmp_path, 30)
    sets, info, deg = build_datasets(build_config({"data": {"source": str(p), "degradation": "sr2"}}))
    assert info.image_size == (30, 30) and info.num_classes == 2 and info.source == str(p)
    assert sets["train"][0]["x_lq"].shape == (1, 15, 15)


def test_build_datasets_npz_side_not_divisible_by_scale(tmp_path):
    p = _npz_side(tmp_path, 30)
    cfg = build_config({"data": {"source": str(p), "degradation": "sr4"}})
    with pytest.raises(DataError) as info:
        build_datasets(cfg)
    msg = str(info.value)
    assert "30x30" in msg and "down-sampled by 4" in msg and "divisible" in msg
    assert str(p) in msg


def test_build_datasets_missing_source(tmp_path):
    cfg = build_config({"data": {"source": str(tmp_path / "gone.npz")}})
    with pytest.raises(DataError, match="gone.npz"):
        build_datasets(cfg)
    cfg = build_config({"data": {"source": "medmnist"}})
    with pytest.raises(DataError, match="data.source"):
        build_datasets(cfg)


def test_build_datasets_segmentation_npz_without_val(tmp_path):
    # no labels and no val_* arrays: masks are the targets and val is held out of train
    p = write_npz(tmp_path / "seg.npz",
                  train_images=gray_uint8(4, side=16), train_masks=np.zeros((4, 16, 16), np.uint8),
                  test_images=gray_uint8(2, side=16), test_masks=np.full((2, 16, 16), 2, np.uint8))
    sets, info, _ = build_datasets(build_config({"task": "segmentation", "data": {"source": str(p),
                                                                                  "val_fraction": 0.25}}))
    assert info.seg_classes == 3 and len(sets["val"]) == 1
