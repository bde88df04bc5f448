"""`gradprom export`: the enhancer (optionally with the recognizer) as ONNX or TorchScript, checked against
PyTorch, with a sidecar JSON (`<FILE>.json`) saying how to prepare inputs, so a third party can reproduce it.

The exported graph is E then clip to [0, 1] (what `gradprom enhance` writes); with the recognizer it also
returns R's logits on E's unclipped output (as in evaluation). Both exporters trace the network: the U-Nets pad
to a multiple of their down-sampling factor, so the trace is taken on an odd-sized example (the padding branch
is then in the graph) and height and width stay dynamic. The export is checked on random inputs of two sizes
and on real inputs (the run's own degraded test images, when its data is at hand).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

from gradprom.platform.atomic import atomic_path, atomic_write_text
from gradprom.platform.data.sources import build_datasets
from gradprom.platform.errors import ConfigError, GradPromError
from gradprom.platform.rundir import versions

from .manifest import sha256
from .options import FORMATS
from .runs import TrainedRun

log = logging.getLogger(__name__)
TOLERANCE = 1e-4
OPSET = 17


class ExportError(GradPromError):
    """The exported model does not reproduce PyTorch's outputs."""


class Exported(nn.Module):
    """image -> clipped enhanced image (and the recognizer's logits)."""

    def __init__(self, enhancer: nn.Module, recognizer: nn.Module | None = None):
        super().__init__()
        self.enhancer, self.recognizer = enhancer, recognizer

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        y = self.enhancer(x)
        if self.recognizer is None:
            return y.clamp(0.0, 1.0)
        return y.clamp(0.0, 1.0), self.recognizer(y)


@dataclass
class ExportResult:
    """The files written, whether height/width are dynamic, and the checks (max abs difference each)."""

    file: Path
    sidecar: Path
    dynamic: bool
    checks: list[dict[str, Any]] = field(default_factory=list)


def _odd(n: int) -> int:
    return n if n % 2 else n + 1


def _real_inputs(run: TrainedRun, n: int = 4) -> Tensor | None:
    """Up to `n` degraded test images of the run's own data (None when the data is not at hand)."""
    try:
        datasets, _, _ = build_datasets(run.cfg)
        test = datasets["test"]
        items = [test[i]["x_lq"] for i in range(min(n, len(test)))] if hasattr(test, "__getitem__") else \
            [it["x_lq"] for _, it in zip(range(n), test, strict=False)]
    except (GradPromError, OSError) as e:
        log.warning("real-input check skipped: the run's data %r is not readable here (%s)", run.cfg.data.source, e)
        return None
    return torch.stack(items) if items else None


def _outputs(y: Tensor | tuple[Tensor, ...]) -> list[np.ndarray]:
    return [t.detach().numpy() for t in (y if isinstance(y, tuple) else (y,))]


def _write(model: Exported, fmt: str, dest: Path, example: Tensor, dynamic: bool, names: list[str]) -> None:
    with warnings.catch_warnings(), atomic_path(dest) as tmp:
        warnings.simplefilter("ignore")  # tracer warnings about the padding arithmetic, checked below instead
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(tmp))
            return
        axes = {"image": {0: "batch", 2: "height", 3: "width"}, "enhanced": {0: "batch", 2: "out_height",
                                                                             3: "out_width"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=names, dynamic_axes={k: v for k, v in axes.items() if k in ["image", *names]}
                          if dynamic else None)
        onnx.checker.check_model(onnx.load(str(tmp)))


def _runner(fmt: str, path: Path):
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript for torch.export
            ts = torch.jit.load(str(path))

        def run_ts(x: np.ndarray) -> list[np.ndarray]:
            with torch.no_grad():
                return _outputs(ts(torch.from_numpy(x)))
        return run_ts
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"image": x})


def _check(model: Exported, run_exported, inputs: dict[str, Tensor]) -> list[dict[str, Any]]:
    checks = []
    for what, x in inputs.items():
        with torch.no_grad():
            want = _outputs(model(x))
        try:
            got = run_exported(x.numpy())
        except Exception as e:  # noqa: BLE001 - e.g. a size the traced graph cannot take
            checks.append({"input": what, "shape": list(x.shape), "error": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        diff = max(float(np.abs(g - w).max()) if g.shape == w.shape else float("inf")
                   for g, w in zip(got, want, strict=True))
        checks.append({"input": what, "shape": list(x.shape), "max_abs_diff": diff})
    return checks


def export_run(run: TrainedRun, fmt: str, out: str | Path, recognizer: bool = False, seed: int = 0) -> ExportResult:
    """Write the export and its sidecar; raises ExportError when it does not match PyTorch within TOLERANCE."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}.")
    dest = Path(out)
    model = Exported(run.enhancer.cpu().eval(), run.recognizer.cpu().eval() if recognizer else None).eval()
    names = ["enhanced", "logits"] if recognizer else ["enhanced"]
    c, (h, w) = run.channels, run.train_size
    gen = torch.Generator().manual_seed(seed)
    example = torch.rand(1, c, _odd(h), _odd(w), generator=gen)
    inputs = {"random (example size)": example, "random (other size)": torch.rand(2, c, h + 6, w + 10, generator=gen)}
    real = _real_inputs(run)
    if real is not None:
        inputs["real (the run's degraded test images)"] = real
    _write(model, fmt, dest, example, True, names)
    checks = _check(model, _runner(fmt, dest), inputs)
    dynamic = all("error" not in ch and ch["max_abs_diff"] <= TOLERANCE for ch in checks)
    if not dynamic:  # the graph does not generalize over sizes: export for the training size only
        log.warning("%s export is not size-dynamic for this network; exporting for %dx%d inputs only", fmt, h, w)
        fixed = torch.rand(1, c, h, w, generator=gen)
        _write(model, fmt, dest, fixed, False, names)
        keep = {"random (training size)": fixed, **({"real (the run's degraded test images)": real}
                                                     if real is not None and tuple(real.shape[-2:]) == (h, w) else {})}
        checks = _check(model, _runner(fmt, dest), keep)
    worst = max((ch.get("max_abs_diff", float("inf")) for ch in checks), default=float("inf"))
    sidecar = dest.with_name(dest.name + ".json")
    atomic_write_text(sidecar, json.dumps(_sidecar(run, fmt, dest, dynamic, recognizer, checks), indent=1) + "\n")
    result = ExportResult(dest, sidecar, dynamic, checks)
    if worst > TOLERANCE:
        raise ExportError(f"{fmt} export {str(dest)!r} differs from PyTorch by {worst:.3g} (> {TOLERANCE:g}) on "
                          f"{[ch['input'] for ch in checks if ch.get('max_abs_diff', float('inf')) > TOLERANCE]}; "
                          f"the file is kept for inspection, its checks are in {str(sidecar)!r}.")
    return result


def _sidecar(run: TrainedRun, fmt: str, dest: Path, dynamic: bool, recognizer: bool,
             checks: list[dict[str, Any]]) -> dict[str, Any]:
    c, (h, w), s = run.channels, run.train_size, run.scale
    size = ["batch", c, "height", "width"] if dynamic else ["batch", c, h, w]
    outputs = [{"name": "enhanced", "shape": ["batch", c, f"height*{s}", f"width*{s}"] if dynamic
                else ["batch", c, h * s, w * s], "dtype": "float32", "range": [0.0, 1.0]}]
    if recognizer:
        outputs.append({"name": "logits", "task": run.cfg.task, "dtype": "float32",
                        "shape": ["batch", "classes"] if run.cfg.task == "classification"
                        else ["batch", "classes", f"height*{s}", f"width*{s}"]})
    return {
        "format": fmt, "file": dest.name, "sha256": sha256(dest), "opset": OPSET if fmt == "onnx" else None,
        "run": str(run.path), "checkpoint": str(run.checkpoint), "task": run.cfg.task,
        "strategy": run.cfg.gradprom.strategy, "degradation": run.cfg.data.degradation,
        "inputs": [{"name": "image", "shape": size, "dtype": "float32"}], "outputs": outputs,
        "dynamic_height_width": dynamic,
        "preprocessing": {
            "value_range": [0.0, 1.0], "channels": c, "channel_order": "grayscale" if c == 1 else "RGB",
            "layout": "NCHW", "scale_factor": s, "training_input_size": [h, w],
            "scaling": "uint8 / 255, uint16 / 65535, float as is; DICOM: stored values * RescaleSlope + "
                       "RescaleIntercept, then the window (the file's own, else its min..max) to [0, 1], "
                       "MONOCHROME1 inverted",
            "large_images": "gradprom enhance runs windows of training_input_size (MONAI sliding window); the "
                            "exported network itself takes any size" if dynamic else
                            "tile into windows of training_input_size",
        },
        "postprocessing": "the enhanced output is already clipped to [0, 1]; scale back to the input's type",
        "checks": checks, "tolerance": TOLERANCE,
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
