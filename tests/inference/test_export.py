"""`gradprom export`: ONNX (run with onnxruntime) and TorchScript files give PyTorch's outputs within 1e-4 on
sizes other than the traced one, and the sidecar JSON says how to prepare the inputs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from gradprom.cli import main
from gradprom.inference.export import TOLERANCE, Exported, export_run


def _reference(run, x, recognizer=False):
    with torch.no_grad():
        y = Exported(run.enhancer, run.recognizer if recognizer else None).eval()(torch.from_numpy(x))
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("run_name", ["plain_run", "sr_run"])
def test_export_matches_pytorch_at_other_sizes(request, run_name, fmt, tmp_path):
    run = request.getfixturevalue(run_name)
    dest = tmp_path / f"e.{'onnx' if fmt == 'onnx' else 'pt'}"
    result = export_run(run, fmt, dest)
    assert result.dynamic
    assert all(ch["max_abs_diff"] <= TOLERANCE for ch in result.checks)
    assert any(ch["input"].startswith("real") for ch in result.checks)  # the run's own phantoms are at hand
    x = np.random.default_rng(7).random((3, run.channels, 24, 40), dtype=np.float32)  # a size never traced
    want = _reference(run, x)[0]
    if fmt == "onnx":
        got = onnxruntime.InferenceSession(str(dest), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(dest))(torch.from_numpy(x)).numpy()
    assert got.shape == (3, run.channels, 24 * run.scale, 40 * run.scale)
    assert np.abs(got - want).max() <= TOLERANCE

    side = json.loads(dest.with_name(dest.name + ".json").read_text())
    pre = side["preprocessing"]
    assert pre["value_range"] == [0.0, 1.0] and pre["channels"] == run.channels and pre["scale_factor"] == run.scale
    assert side["run"].endswith(run.name) and side["versions"]["torch"] == torch.__version__
    assert side["versions"]["onnxruntime"] == onnxruntime.__version__ and side["dynamic_height_width"] is True


def test_export_with_recognizer_through_the_cli(runs_root, plain_run, tmp_path, capsys):
    dest = tmp_path / "both.onnx"
    assert main(["export", str(runs_root / "plain"), "--format", "onnx", "--out", str(dest), "--recognizer"]) == 0
    out = capsys.readouterr().out
    assert "max abs diff vs PyTorch" in out and "dynamic" in out
    x = np.random.default_rng(8).random((2, 1, 32, 32), dtype=np.float32)
    got = onnxruntime.InferenceSession(str(dest), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    want = _reference(plain_run, x, recognizer=True)
    assert [g.shape for g in got] == [w.shape for w in want] and want[1].shape == (2, 3)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w).max() <= TOLERANCE
