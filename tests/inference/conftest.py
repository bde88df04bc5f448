"""Two tiny trained runs shared by every inference test (trained once per session, in this process):
`plain` denoises 32x32 phantoms, `sr` super-resolves x2 (inputs 16x16 -> 32x32). Each trains 2 steps of
2-level networks, which is enough: the tests compare the outputs with the network's own, not with quality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradprom.cli import main
from gradprom.inference.runs import TrainedRun, load_run

TINY = ["--set", "data.num_train=16", "--set", "data.num_val=8", "--set", "data.num_test=8",
        "--set", "data.image_size=32", "--set", "data.batch_size=8", "--max-steps-per-epoch", "2",
        "--set", "model.enhancer_channels=[4,8]", "--set", "model.recognizer_channels=[4,8]", "--epochs", "1",
        "--device", "cpu"]


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inference-runs")
    torch.set_num_threads(1)
    for name, extra in (("plain", []), ("sr", ["--degradation", "sr2"])):
        assert main(["-q", "train", *TINY, *extra, "--out", str(root), "--name", name]) == 0
    return root


@pytest.fixture(scope="session")
def plain_run(runs_root) -> TrainedRun:
    return load_run(runs_root / "plain", "best", "cpu")


@pytest.fixture(scope="session")
def sr_run(runs_root) -> TrainedRun:
    return load_run(runs_root / "sr", "best", "cpu")
