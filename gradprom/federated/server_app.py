"""The federation's ServerApp: Flower glue that runs the chosen strategy and keeps the run directory.

Each round: sites train (client_app.py), the wrapped Flower strategy aggregates (strategy.py), sites evaluate
the new global model on their own splits, and the server evaluates it on the held-out split that no site
sees, writes rounds.parquet / epochs.parquet and checkpoints/latest.pt (atomically). A stopped federation
resumes from its last checkpointed round.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from gradprom.platform.checkpoint import load_checkpoint, save_checkpoint
from gradprom.platform.datasets import EnhancementDataset
from gradprom.platform.degradations import parse_degradation
from gradprom.platform.errors import ConfigError, DataError
from gradprom.platform.loop import default_run_name
from gradprom.platform.metrics import task_metric_name
from gradprom.platform.rundir import RunDir, now_iso, versions, write_parquet

from .config import build_federation, federation_dict, from_run_config, save_federation
from .partition import describe_sites, info_to_config, load_dataset
from .records import RoundsRecorder
from .server_gate import apply_to_weights, gate_aggregate, weighted_pair
from .strategy import build_strategy, from_record, to_record
from .task import enhancer_flat, enhancer_layout, evaluate_arrays, get_arrays, new_models, set_arrays

log = logging.getLogger(__name__)


def run_path_for(raw: dict[str, Any]) -> Path:
    """<run.out>/<run.name>, the name defaulting to federated-<strategy>-<time>."""
    cfg, fed = build_federation(raw)
    name = cfg.run.name or "federated-" + default_run_name(cfg)
    return Path(cfg.run.out) / name


def preflight(raw: dict[str, Any], path: Path, resume: bool) -> None:
    """Mistakes to report before any process starts: a taken run directory, nothing left to resume, bad data."""
    cfg, fed = build_federation(raw, source="federation config")
    run = RunDir(path)
    if run.exists() and not resume:
        raise ConfigError(f"Run directory {str(run.path)!r} already holds a run; continue it with --resume, or "
                          f"choose another --name / --out.")
    if resume and not run.config_yaml.is_file():
        raise DataError(f"--resume {str(run.path)!r}: not a federation's run directory (no config.yaml).")
    if resume and run.latest_checkpoint().is_file():
        done = int(load_checkpoint(run.latest_checkpoint()).get("round", 0))
        if done >= fed.rounds:
            raise ConfigError(f"{str(run.path)!r} already ran {done} rounds (federated.rounds = {fed.rounds}); "
                              f"pass --rounds larger than {done} to continue it.")
    load_dataset(cfg)  # a missing or malformed data source is a clear error here, not in a Flower thread


def _server_gate(cfg, models, info: dict):
    """The `gate_level: server` hook for the strategy (see server_gate.py for the rule)."""
    layout = enhancer_layout(models)
    names = layout.names

    def hook(rnd: int, start: ArrayRecord, agg: ArrayRecord, pairs, weights) -> ArrayRecord:
        mean_ge, mean_gr = weighted_pair(pairs, weights)
        gate = gate_aggregate(mean_ge, mean_gr, cfg.gradprom.tau, cfg.gradprom.granularity, layout)
        arrays = from_record(agg)
        new = apply_to_weights(enhancer_flat(from_record(start), models), enhancer_flat(arrays, models), gate)
        for name, piece in zip(names, torch.split(new, layout.sizes)):
            key = f"enhancer.{name}"
            arrays[key] = piece.reshape(np.asarray(arrays[key]).shape).numpy().astype(np.asarray(arrays[key]).dtype)
        info[rnd] = (float(gate.decision.gate_open), float(gate.decision.cos))
        log.info("round %d: server gate %s (cos %+.3f, tau %g)", rnd, "open" if info[rnd][0] > 0 else "closed",
                 info[rnd][1], cfg.gradprom.tau)
        return to_record(arrays)

    return hook


def _weighted(rows: list[dict], key: str) -> float | None:
    ok = [r for r in rows if r.get(key) is not None and not math.isnan(r[key]) and r.get("num_examples")]
    n = sum(r["num_examples"] for r in ok)
    return sum(r[key] * r["num_examples"] for r in ok) / n if n else None


def run_server(grid: Grid, raw: dict[str, Any], run_path: str | Path | None = None, resume: bool = False) -> Path:
    """Run (or resume) the federation described by `raw` on `grid`; returns the run directory."""
    # --- setup ----------------------------------------------------------------------------------------
    cfg, fed = build_federation(raw, source="federation config")
    torch.set_num_threads(cfg.run.num_threads or 1)
    run = RunDir(run_path or run_path_for(raw))
    preflight(raw, run.path, resume)
    sets, info = load_dataset(cfg)
    models = new_models(cfg, info)
    arrays = get_arrays(models)
    metric = task_metric_name(cfg.task)

    # --- resume from the last checkpointed round -----------------------------------------------------
    done, rows, epoch_rows, elapsed = 0, [], [], 0.0
    if resume and run.latest_checkpoint().is_file():
        state = load_checkpoint(run.latest_checkpoint())
        try:
            models.enhancer.load_state_dict(state["enhancer"])
            models.recognizer.load_state_dict(state["recognizer"])
        except RuntimeError as e:
            raise ConfigError(f"--resume {str(run.path)!r}: its checkpoint does not fit the configuration "
                              f"({str(e).splitlines()[0][:200]}).") from None
        arrays, done, elapsed = get_arrays(models), int(state["round"]), float(state.get("elapsed", 0.0))
        if (run.path / "rounds.parquet").is_file():
            rows = [r for r in pq.read_table(run.path / "rounds.parquet").to_pylist() if r["round"] <= done]
        epoch_rows = [r for r in run.read_epochs() if r["split"] == "val" and r["epoch"] <= done]
        log.info("resuming %s after round %d of %d", run.path, done, fed.rounds)
    run.create()
    sites = describe_sites(cfg, fed)
    write_parquet(run.path / "sites.parquet", sites)
    for s in sites:
        if s["error"]:
            log.error("%s", s["error"])
    started = run.read_run().get("start") if resume else None
    run.write_run(name=run.path.name, kind="federated", status="running", start=started or now_iso(), end=None,
                  seed=cfg.seed, task=cfg.task, strategy=cfg.gradprom.strategy, tau=cfg.gradprom.tau,
                  **cfg.gate_variant,
                  data=cfg.data.source, hospitals=fed.hospitals, rounds=fed.rounds, fl_strategy=fed.strategy,
                  gate_level=fed.gate_level, local_steps=fed.local_steps, versions=versions(), error=None)
    save_federation(cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": None})}), fed,
                    run.config_yaml)

    # --- the held-out split of the server (never partitioned to a site) ---------------------------------
    deg = parse_degradation(cfg.data.degradation)
    held = {s: EnhancementDataset(sets[s], deg, cfg.task, cfg.seed, s) for s in ("val", "test")}
    recorder = RoundsRecorder(run, cfg.task, rows, elapsed)
    gate_info: dict[int, tuple[float, float]] = {}
    hook = _server_gate(cfg, models, gate_info) if fed.gate_level == "server" else None
    strategy = build_strategy(fed.strategy, recorder, min_nodes=fed.min_connected, min_answers=fed.min_answers,
                              fraction_train=fed.fraction_train, evaluate_sites=fed.evaluate_sites,
                              round_offset=done, server_gate=hook,
                              updates_dir=run.path / "updates" if fed.record_updates else None,
                              proximal_mu=fed.proximal_mu, eta=fed.server_lr, eta_l=cfg.optim.lr, tau=fed.server_tau)

    def evaluate_fn(server_round: int, record: ArrayRecord) -> MetricRecord | None:
        """Server-side evaluation of the global model each round; then the tables and the checkpoint."""
        if server_round == 0:
            return None
        rnd = server_round + done
        glob = from_record(record)
        val = evaluate_arrays(cfg, info, glob, held["val"])
        g_open, g_cos = gate_info.get(rnd, (None, None))
        recorder.global_row(rnd, val, g_open, g_cos, aggregated=strategy.aggregated.get(rnd, 0) > 0,
                            needed=fed.min_answers)
        recorder.write()
        site_rows = [r for r in recorder.rows if r["round"] == rnd and r["site"] != "global" and r["status"] == "ok"]
        gate_rate = g_open if g_open is not None else _weighted(site_rows, "gate_open_rate")
        mean_cos = g_cos if g_cos is not None else _weighted(site_rows, "mean_cos")
        epoch_rows.append({"epoch": rnd, "split": "val", "step": rnd, **val, "gate_open_rate": gate_rate,
                           "mean_cos": mean_cos, "sites_ok": len(site_rows)})
        run.write_epochs(epoch_rows)
        set_arrays(models, glob)
        save_checkpoint(run.latest_checkpoint(), {
            "enhancer": models.enhancer.state_dict(), "recognizer": models.recognizer.state_dict(),
            "round": rnd, "epoch": rnd, "elapsed": recorder.now(), "config": federation_dict(cfg, fed),
            "metrics": val})
        n_fail = sum(1 for r in recorder.rows if r["round"] == rnd and r["status"] != "ok" and r["site"] != "global")
        log.info("round %d/%d: %d sites ok, %d failed/rejected; global val psnr %.2f dB, ssim %.3f, %s %.3f",
                 rnd, fed.rounds, len(site_rows), n_fail, val["psnr"], val["ssim"], metric, val[metric])
        return MetricRecord({k: float(v) for k, v in val.items() if v is not None and not math.isnan(v)})

    # --- the rounds ------------------------------------------------------------------------------------
    try:
        strategy.start(grid=grid, initial_arrays=to_record(arrays), num_rounds=fed.rounds - done,
                       timeout=fed.round_timeout_s,
                       train_config=ConfigRecord({"round-offset": done, **info_to_config(info)}),
                       evaluate_config=ConfigRecord({"round-offset": done, **info_to_config(info)}),
                       evaluate_fn=evaluate_fn)
        # --- the final global model (evaluate_fn loaded it into `models`) on the test split --------------
        test = evaluate_arrays(cfg, info, get_arrays(models), held["test"])
        epoch_rows.append({"epoch": fed.rounds, "split": "test", "step": fed.rounds, **test})
        run.write_epochs(epoch_rows)
        run.write_run(status="finished", end=now_iso(), test=test)
        return run.path
    except KeyboardInterrupt as e:
        run.write_run(status="stopped", end=now_iso(), error=f"{e or 'interrupted by the user'}; continue it with "
                      f"`gradprom federate --resume {run.path}`")
        raise
    except BaseException as e:
        run.write_run(status="failed", end=now_iso(), error=f"{type(e).__name__}: {e}")
        raise


def make_server_app(raw: dict[str, Any] | None = None, run_path: str | Path | None = None,
                    resume: bool = False) -> ServerApp:
    """A ServerApp with the config fixed (simulation) or read from the run config (None: `flwr run`)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        conf = raw if raw is not None else from_run_config(dict(context.run_config))
        run_server(grid, conf, run_path, resume)

    return server


app = make_server_app()
