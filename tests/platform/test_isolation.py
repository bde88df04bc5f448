"""The engine imports neither Ray Tune nor Flower: later layers plug in a reducer and a driver."""

from __future__ import annotations

import subprocess
import sys


def test_platform_imports_neither_ray_tune_nor_flower():
    code = (
        "import sys, gradprom.platform, gradprom.platform.loop, gradprom.platform.step, gradprom.cli\n"
        "bad = sorted(m for m in sys.modules if m == 'flwr' or m.startswith(('flwr.', 'ray.tune', 'ray.train')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"gradprom.platform pulled in: {out.stdout}"
