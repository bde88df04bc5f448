"""The embedded CT-like phantoms: reproducible, well-formed, and with class carried by lesion texture."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.platform.data.phantoms import SEG_CLASSES, TEXTURE_NAMES, make_phantom, make_phantoms


@pytest.fixture(scope="module")
def sixty():
    return make_phantoms(60, seed=0, size=64, num_classes=3)


def test_same_seed_gives_identical_arrays():
    a = make_phantoms(12, seed=7, size=32)
    b = make_phantoms(12, seed=7, size=32)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_different_seed_gives_different_arrays():
    a = make_phantoms(12, seed=7, size=32)
    b = make_phantoms(12, seed=8, size=32)
    assert not np.array_equal(a.images, b.images)
    assert not np.array_equal(a.masks, b.masks)
    # and every single image differs, not just some
    assert all(not np.array_equal(x, y) for x, y in zip(a.images, b.images))


def test_first_k_images_do_not_depend_on_n():
    small = make_phantoms(5, seed=3, size=32)
    big = make_phantoms(20, seed=3, size=32)
    np.testing.assert_array_equal(small.images, big.images[:5])
    np.testing.assert_array_equal(small.labels, big.labels[:5])
    np.testing.assert_array_equal(small.masks, big.masks[:5])


def test_offset_selects_the_same_indices():
    full = make_phantoms(10, seed=3, size=32)
    tail = make_phantoms(4, seed=3, size=32, offset=6)
    np.testing.assert_array_equal(tail.images, full.images[6:])
    img, label, mask = make_phantom(3, 8, size=32)
    np.testing.assert_array_equal(img, full.images[8, 0])
    assert label == full.labels[8]
    np.testing.assert_array_equal(mask, full.masks[8])


def test_images_are_float32_in_unit_range_with_nchw_shape(sixty):
    assert sixty.images.shape == (60, 1, 64, 64)
    assert sixty.images.dtype == np.float32
    assert np.isfinite(sixty.images).all()
    assert sixty.images.min() >= 0.0 and sixty.images.max() <= 1.0
    # not degenerate: there is a body (non-zero) and background (zero)
    assert (sixty.images > 0).any() and (sixty.images == 0).any()


@pytest.mark.parametrize("size", [16, 32, 48])
def test_shapes_follow_size(size):
    ph = make_phantoms(3, seed=1, size=size)
    assert ph.images.shape == (3, 1, size, size)
    assert ph.masks.shape == (3, size, size)
    assert ph.labels.shape == (3,)


def test_labels_in_range_and_all_classes_occur(sixty):
    assert sixty.labels.dtype == np.int64
    assert sixty.labels.shape == (60,)
    assert sixty.labels.min() >= 0 and sixty.labels.max() <= 2
    assert set(sixty.labels.tolist()) == {0, 1, 2}


def test_four_classes_all_occur():
    ph = make_phantoms(60, seed=0, size=32, num_classes=4)
    assert set(ph.labels.tolist()) == {0, 1, 2, 3}


def test_masks_have_background_organ_and_lesion(sixty):
    assert SEG_CLASSES == 3
    assert sixty.masks.dtype == np.int64
    assert set(np.unique(sixty.masks).tolist()) == {0, 1, 2}
    for m in sixty.masks:
        assert set(np.unique(m).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("size", [16, 32, 64])
def test_lesion_present_in_every_image(size):
    ph = make_phantoms(40, seed=5, size=size)
    assert all((m == 2).any() for m in ph.masks)


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbours are all in `mask` (a one-pixel erosion, no wrap-around)."""
    m = mask.copy()
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = False
    return m & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)


def _lesion_laplacian(img: np.ndarray, mask: np.ndarray) -> float:
    lap = (np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1) - 4 * img)
    inner = _interior(mask == 2)
    assert inner.any(), "lesion too small to have an interior"
    return float(np.abs(lap[inner]).mean())


def test_texture_differs_per_class(sixty):
    """Mean |Laplacian| inside the lesion: ~0 for homogeneous, clearly > 0 for the textured classes."""
    energy = {k: [] for k in range(3)}
    for img, label, mask in zip(sixty.images[:, 0].astype(np.float64), sixty.labels, sixty.masks):
        energy[int(label)].append(_lesion_laplacian(img, mask))
    assert TEXTURE_NAMES[0] == "homogeneous"
    assert max(energy[0]) < 1e-6
    for k in (1, 2):
        # texture_contrast 0.06: a +-0.06 pattern with a 2-3 pixel period gives |Laplacian| of order 0.1
        assert min(energy[k]) > 0.03, (k, min(energy[k]))
        assert np.mean(energy[k]) > 100 * (np.mean(energy[0]) + 1e-9)


def test_speckle_class_is_textured_too():
    ph = make_phantoms(40, seed=2, size=64, num_classes=4)
    speckle = [_lesion_laplacian(i[0].astype(np.float64), m) for i, lab, m in zip(ph.images, ph.labels, ph.masks)
               if lab == 3]
    assert speckle and min(speckle) > 0.03


def test_texture_contrast_scales_the_texture():
    lo = make_phantoms(20, seed=4, size=64, texture_contrast=0.03)
    hi = make_phantoms(20, seed=4, size=64, texture_contrast=0.12)
    np.testing.assert_array_equal(lo.labels, hi.labels)
    i = int(np.flatnonzero(lo.labels == 1)[0])
    e_lo = _lesion_laplacian(lo.images[i, 0].astype(np.float64), lo.masks[i])
    e_hi = _lesion_laplacian(hi.images[i, 0].astype(np.float64), hi.masks[i])
    assert e_hi == pytest.approx(4 * e_lo, rel=0.05)


@pytest.mark.parametrize("k", [5, 10])
def test_too_many_classes_raises(k):
    with pytest.raises(ValueError, match="at most 4"):
        make_phantoms(2, seed=0, num_classes=k)
