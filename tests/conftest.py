"""Shared fixtures. The test device comes from GRADPROM_TEST_DEVICE (default cpu), so the same tests run on
a GPU machine with GRADPROM_TEST_DEVICE=cuda."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("GRADPROM_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="session", autouse=True)
def _phantom_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generated phantoms are cached under a temporary directory, never the user's ~/.cache."""
    old = os.environ.get("GRADPROM_CACHE_DIR")
    os.environ["GRADPROM_CACHE_DIR"] = str(tmp_path_factory.mktemp("gradprom-cache"))
    yield
    if old is None:
        os.environ.pop("GRADPROM_CACHE_DIR", None)
    else:
        os.environ["GRADPROM_CACHE_DIR"] = old
