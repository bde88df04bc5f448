"""Shared fixtures. The test device comes from GRADPROM_TEST_DEVICE (default cpu), so the same tests run on
a GPU machine with GRADPROM_TEST_DEVICE=cuda."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("GRADPROM_TEST_DEVICE", "cpu"))
