"""Shared fixtures. The test device comes from GRADPROM_TEST_DEVICE (default cpu), so the same tests run on
a GPU machine with GRADPROM_TEST_DEVICE=cuda."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("GRADPROM_TEST_DEVICE", "cpu").startswith("cuda"):
    # the tests compare the step with plain backward() at fp32 tolerances; TF32 convolutions (cuDNN's default)
    # round to 10 mantissa bits and would fail them for reasons that are not the code's
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("GRADPROM_TEST_DEVICE", "cpu"))
