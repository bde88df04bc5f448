"""Shared fixtures. The test device comes from GRADPROM_TEST_DEVICE (default cpu), so the same tests run on
a GPU machine with GRADPROM_TEST_DEVICE=cuda."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

if os.environ.get("GRADPROM_TEST_DEVICE", "cpu").startswith("cuda"):
    # the tests compare the step with plain backward() at fp32 tolerances; TF32 convolutions (cuDNN's default)
    # round to 10 mantissa bits and would fail them for reasons that are not the code's
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
# generated phantoms are cached under a temporary directory, never the user's ~/.cache; set at import, before any
# test module copies os.environ for its subprocesses
if "GRADPROM_CACHE_DIR" not in os.environ:
    os.environ["GRADPROM_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradprom-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GRADPROM_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("GRADPROM_TEST_DEVICE", "cpu"))

