"""The federation's figure, `figures/rounds.png`: per-site PSNR and gate-open rate per round, global line bold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from gradprom.platform.figures import plt, save_figure


def _ys(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if r.get(key) is None else float(r[key]) for r in rows]


def save_rounds(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Draw rounds.parquet's rows (one per round x site, plus site == "global"); False when there is no round yet.

    PSNR: each site's own val split after its local steps, and the global model on the server's held-out split.
    Gate-open rate: each site's share of open local steps; global: the server gate's decision
    (`gate_level: server`), else the sample-weighted rate of the sites."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return False
    sites = sorted({r["site"] for r in ok if r["site"] != "global"})
    glob = sorted((r for r in ok if r["site"] == "global"), key=lambda r: r["round"])
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2))
    for site in sites:
        mine = sorted((r for r in ok if r["site"] == site), key=lambda r: r["round"])
        rounds = [r["round"] for r in mine]
        axes[0].plot(rounds, _ys(mine, "psnr"), marker="o", lw=1, alpha=0.8, label=site)
        axes[1].plot(rounds, _ys(mine, "gate_open_rate"), marker="o", lw=1, alpha=0.8, label=site)
    if glob:
        rounds = [r["round"] for r in glob]
        axes[0].plot(rounds, _ys(glob, "psnr"), color="black", lw=2.5, marker="s", label="global")
        gate = _ys(glob, "server_gate_open")
        if all(math.isnan(g) for g in gate):  # local gating: the sites' rate weighted by their images
            gate = []
            for r in glob:
                mine = [s for s in ok if s["round"] == r["round"] and s["site"] != "global"
                        and s.get("gate_open_rate") is not None and s.get("num_examples")]
                n = sum(s["num_examples"] for s in mine)
                gate.append(sum(s["gate_open_rate"] * s["num_examples"] for s in mine) / n if n else math.nan)
        axes[1].plot(rounds, gate, color="black", lw=2.5, marker="s", label="global")
    for ax, title in zip(axes, ("val PSNR (dB)", "gate-open rate (global: server gate, or the sites' mean)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
    return True
