"""Under bf16 autocast (the engine's setting on CUDA) the gate still sees fp32 gradients and an fp32 cosine,
so its decisions are not rounded to bf16's 8 mantissa bits. CPU autocast runs the same code path."""

from __future__ import annotations

import pytest
import torch

from gradprom.platform.step import TrainStep
from gradprom.platform.strategies import GradProm

from ._models import tiny


class RecordingGate(GradProm):
    """GradProm that remembers the dtypes it was handed."""

    def forward(self, g_e, g_r, cos, layout):
        self.seen = (g_e.dtype, g_r.dtype, cos.dtype)
        return super().forward(g_e, g_r, cos, layout)


@pytest.mark.parametrize("gate_space,vjp", [("parameter", "sequential"), ("parameter", "batched"),
                                            ("output", "sequential")])
def test_gate_sees_fp32_under_bf16_autocast(gate_space, vjp, device):
    E, R, x_lq, x_hq, y = tiny(device=device, seed=4)
    gate = RecordingGate(0.0)
    step = TrainStep(E, R, torch.optim.SGD(E.parameters(), lr=0.1), torch.optim.SGD(R.parameters(), lr=0.1), gate,
                     gate_space=gate_space, vjp=vjp, autocast_dtype=torch.bfloat16)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        assert R(x_hq).dtype == torch.bfloat16  # autocast is active on this device: the test means something
    res = step(x_lq, x_hq, y)
    assert not res.skipped
    assert gate.seen == (torch.float32, torch.float32, torch.float32)
    assert all(p.dtype == torch.float32 for p in E.parameters())


@pytest.mark.parametrize("device_type,precision,expected", [("cuda", "bf16", torch.bfloat16), ("cuda", "fp32", None),
                                                           ("cpu", "bf16", None)])
def test_run_precision_picks_the_steps_autocast(device_type, precision, expected):
    """`run.precision` decides bf16 autocast on CUDA; on the CPU the step always runs in fp32."""
    from gradprom.platform.config import build_config

    cfg = build_config({"run": {"precision": precision}})
    E, R, *_ = tiny()
    step = TrainStep.from_config(cfg, E, R, torch.optim.SGD(E.parameters(), lr=0.1), None,
                                 device=torch.device(device_type))
    assert step.autocast_dtype == expected


def test_run_precision_rejects_other_values():
    from gradprom.platform.config import build_config
    from gradprom.platform.errors import ConfigError

    with pytest.raises(ConfigError, match=r"run\.precision"):
        build_config({"run": {"precision": "fp16"}})
