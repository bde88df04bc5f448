"""Contract-conforming federation and Tune tables for the dashboard tests, beside the tiny real `gradprom
federate` and `gradprom tune` runs of the fixture: they hold what tiny real runs do not produce (failed and
rejected hospital replies, an errored and an early-stopped trial, a Pareto front of several trials). The
columns are exactly the agreed tables contract (rounds.parquet, sites.parquet, epochs.parquet; trials.parquet,
pareto.parquet, best/); the values are seeded pseudo-random numbers, and the tests compare the page against
whatever these files hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

BASE_CONFIG = {"task": "classification", "seed": 0,
               "data": {"source": "phantoms", "image_size": 32, "degradation": "gaussian:sigma=0.1"},
               "gradprom": {"strategy": "gradprom", "tau": 0.0, "lambda_e": 1.0, "lambda_r": 0.1}}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in rows]), path)


def _run_json(path: Path, **fields) -> None:
    path.mkdir(parents=True, exist_ok=True)
    info = {"name": path.name, "status": "finished", "start": "2026-01-01T10:00:00+00:00",
            "end": "2026-01-01T10:05:00+00:00", "task": "classification", "strategy": "gradprom", "tau": 0.0,
            **fields}
    (path / "run.json").write_text(json.dumps(info, indent=2))
    (path / "config.yaml").write_text(yaml.safe_dump(BASE_CONFIG))


def write_federation(path: Path, rounds: int = 3, hospitals: int = 3, seed: int = 0) -> Path:
    """A finished 3-hospital federation with one failed and one rejected client reply."""
    rng = np.random.default_rng(seed)
    _run_json(path, kind="federated", hospitals=hospitals, rounds=rounds, fl_strategy="FedAvg", gate_level="client")
    sites = [f"hospital-{i}" for i in range(hospitals)]
    _write(path / "sites.parquet", [{"site": s, "num_train": 40 + 10 * i, "num_val": 10,
                                     "class_mix": [round(float(x), 3) for x in rng.dirichlet([1, 1, 1])],
                                     "degradation": "gaussian:sigma=0.1"} for i, s in enumerate(sites)])
    rows, epochs = [], []
    for r in range(1, rounds + 1):
        for i, s in enumerate(sites):
            base = {"round": r, "site": s, "time": 10.0 * r + i}
            if (r, i) == (2, 2):
                rows.append({**base, "status": "failed", "error": "TimeoutError: no reply within 30 s",
                             "num_examples": 0})
                continue
            if (r, i) == (3, 1):
                rows.append({**base, "status": "rejected", "error": "non-finite weights", "num_examples": 40 + 10 * i})
                continue
            rows.append({**base, "status": "ok", "error": None, "num_examples": 40 + 10 * i,
                         "psnr": 20 + r + rng.random(), "ssim": 0.5 + 0.05 * r * rng.random(),
                         "accuracy": 0.3 + 0.1 * r * rng.random(), "auc": 0.5 + 0.1 * rng.random(),
                         "loss_e": 0.1 / r, "loss_r": 1.0 / r, "gate_open_rate": float(rng.random()),
                         "mean_cos": float(rng.uniform(-1, 1)), "norm_ge": float(rng.random()),
                         "norm_gr": float(rng.random()), "server_gate_open": None, "server_cos": None})
        g = {"round": r, "site": "global", "status": "ok", "error": None, "time": 10.0 * r + 5,
             "num_examples": sum(x["num_examples"] for x in rows if x["round"] == r and x["status"] == "ok"),
             "psnr": 21 + r + rng.random(), "ssim": 0.55 + 0.05 * r, "accuracy": 0.35 + 0.1 * r,
             "auc": 0.6 + 0.05 * r, "loss_e": 0.09 / r, "loss_r": 0.9 / r}
        rows.append(g)
        epochs.append({"epoch": r, "split": "val", **{k: g[k] for k in ("psnr", "ssim", "accuracy", "auc", "loss_e",
                                                                        "loss_r")}})
    epochs.append({**epochs[-1], "split": "test"})
    _write(path / "rounds.parquet", rows)
    _write(path / "epochs.parquet", epochs)
    return path


def write_tune(path: Path, trials: int = 4, epochs: int = 3, seed: int = 1) -> Path:
    """A finished two-objective (psnr, accuracy) experiment: one trial errored, one stopped early by ASHA."""
    rng = np.random.default_rng(seed)
    _run_json(path, kind="tune", objective="psnr", metrics=["psnr", "accuracy"], mode=["max", "max"],
              num_trials=trials)
    rows, finals = [], {}
    for t in range(trials):
        tid = f"trial_{t:05d}"
        cfg = {"config/tau": round(float(rng.uniform(-0.2, 0.5)), 4),
               "config/lambda_e": 1.0, "config/lambda_r": round(float(rng.uniform(0.01, 1)), 4),
               "config/lr": round(float(10 ** rng.uniform(-4, -2)), 6)}
        n = 1 if t == 2 else epochs  # trial 2 stopped early
        status = "ERROR" if t == 3 else "TERMINATED"
        for e in range(n if t != 3 else 2):
            row = {"trial_id": tid, "status": status, "epoch": e, "training_iteration": e + 1, **cfg,
                   "psnr": 20 + e + 2 * rng.random(), "ssim": 0.5 + 0.1 * rng.random(),
                   "accuracy": 0.3 + 0.2 * rng.random(), "auc": 0.5 + 0.2 * rng.random(),
                   "loss_e": 0.1, "loss_r": 1.0, "gate_open_rate": float(rng.random()),
                   "mean_cos": float(rng.uniform(-1, 1)), "stopped_early": t == 2}
            rows.append(row)
            finals[tid] = row
    _write(path / "trials.parquet", rows)
    # the non-dominated trials among the finished ones (max psnr, max accuracy)
    done = [r for r in finals.values() if r["status"] == "TERMINATED"]
    front = [r for r in done if not any(o["psnr"] >= r["psnr"] and o["accuracy"] >= r["accuracy"] and o is not r
                                        and (o["psnr"] > r["psnr"] or o["accuracy"] > r["accuracy"]) for o in done)]
    _write(path / "pareto.parquet", [{"trial_id": r["trial_id"],
                                      **{k: v for k, v in r.items() if k.startswith("config/")},
                                      "psnr": r["psnr"], "accuracy": r["accuracy"]} for r in front])
    best = max(done, key=lambda r: r["psnr"])
    (path / "best").mkdir(exist_ok=True)
    cfg = {**BASE_CONFIG, "gradprom": {**BASE_CONFIG["gradprom"], "tau": best["config/tau"],
                                        "lambda_r": best["config/lambda_r"]}, "optim": {"lr": best["config/lr"]}}
    (path / "best" / "best.yaml").write_text(yaml.safe_dump(cfg))
    for r in front:
        (path / "best" / f"pareto-{r['trial_id']}.yaml").write_text(yaml.safe_dump(
            {**BASE_CONFIG, "gradprom": {**BASE_CONFIG["gradprom"], "tau": r["config/tau"]}}))
    return path
