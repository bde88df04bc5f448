"""Phantoms cached on disk: keyed on every parameter, identical to generating them, a damaged file regenerated."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.platform.data import phantom_cache
from gradprom.platform.data.phantom_cache import cache_dir, cache_file, cached_phantoms
from gradprom.platform.data.phantoms import make_phantoms


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADPROM_CACHE_DIR", str(tmp_path / "c"))
    return tmp_path / "c"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADPROM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "gradprom"
    monkeypatch.setenv("GRADPROM_CACHE_DIR", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"


def test_cached_equals_generated_and_is_read_back(cache, monkeypatch):
    args = (6, 3, 32, 3, 0.06, 100)
    first = cached_phantoms(*args)
    path = cache_file(*args)
    assert path.is_file() and path.parent.parent == cache
    fresh = make_phantoms(*args)
    for a, b in ((first.images, fresh.images), (first.labels, fresh.labels), (first.masks, fresh.masks)):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(phantom_cache, "make_phantoms", None)  # a second call must not generate
    again = cached_phantoms(*args)
    np.testing.assert_array_equal(again.images, fresh.images)


def test_every_parameter_is_in_the_key(cache):
    base = dict(n=4, seed=0, size=32, num_classes=3, texture_contrast=0.06, offset=0)
    keys = {cache_file(**base)}
    for k, v in (("n", 5), ("seed", 1), ("size", 48), ("num_classes", 4), ("texture_contrast", 0.07),
                 ("offset", 10)):
        keys.add(cache_file(**{**base, k: v}))
    assert len(keys) == 7
    phantom_cache.GENERATOR_VERSION += 1
    try:
        assert cache_file(**base) not in keys
    finally:
        phantom_cache.GENERATOR_VERSION -= 1


def test_damaged_cache_file_is_regenerated(cache, caplog):
    args = (4, 0, 32, 3, 0.06, 0)
    cached_phantoms(*args)
    path = cache_file(*args)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    ph = cached_phantoms(*args)
    np.testing.assert_array_equal(ph.images, make_phantoms(*args).images)
    assert "unreadable" in caplog.text
    assert cached_phantoms(*args).images.shape == (4, 1, 32, 32)  # and rewritten intact
    assert not list(path.parent.glob("*.tmp"))
