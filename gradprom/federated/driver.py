"""The federation driver behind the ServerApp: the run directory, resume, and the server's per-round work.

`FederationRun(raw, run_path, resume)` checks everything before a round starts (a taken directory, nothing left
to resume, bad data), builds the global model and the server's held-out split (never partitioned to a site),
and restores the last checkpointed round. Then, for Flower's `strategy.start`:
  evaluate(server_round, record)   the global model on the held-out val split -> rounds.parquet,
                                   epochs.parquet, checkpoints/latest.pt (atomically)
  finish()                         the final global model on the held-out test split
The run's status (running / finished / stopped / failed) is the engine's RunLifecycle, as for a local run.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from flwr.app import ArrayRecord, MetricRecord

from gradprom.platform.build import default_run_name
from gradprom.platform.checkpoint import load_checkpoint, save_checkpoint
from gradprom.platform.data.dataset import EnhancementDataset
from gradprom.platform.data.degradations import parse_degradation
from gradprom.platform.errors import ConfigError, DataError
from gradprom.platform.lifecycle import RunLifecycle
from gradprom.platform.loop import saved_config
from gradprom.platform.metrics import task_metric_name
from gradprom.platform.rundir import RunDir, now_iso, versions, write_parquet

from .config import build_federation, federation_dict, save_federation
from .figures import save_rounds
from .flower_runtime import descendants, process_alive
from .partition import describe_sites, info_to_config, load_dataset
from .privacy import privacy_header, privacy_spent
from .records import RoundsRecorder
from .secagg import build_secure_strategy, round_config_fn, secagg_header
from .server_gate import make_server_gate
from .strategy import STOP, build_strategy, from_record, to_record
from .task import evaluate_arrays, get_arrays, new_models, set_arrays

log = logging.getLogger(__name__)
# `gradprom federate` asks for a stop between rounds by creating this file in the run directory (the ServerApp
# runs in Flower's simulation process, which the terminal's Ctrl-C does not reach)
STOP_FILE = "stop-requested"


def run_path_for(raw: dict[str, Any]) -> Path:
    """<run.out>/<run.name>, the name defaulting to federated-<strategy>-<time>."""
    cfg, _ = build_federation(raw)
    return Path(cfg.run.out) / (cfg.run.name or "federated-" + default_run_name(cfg))


def preflight(raw: dict[str, Any], path: Path, resume: bool) -> None:
    """Mistakes to report before any process starts: a taken run directory, nothing left to resume, bad data."""
    cfg, fed = build_federation(raw, source="federation config")
    run = RunDir(path)
    RunLifecycle(run, resume)
    if resume and not run.config_yaml.is_file():
        raise DataError(f"--resume {str(run.path)!r}: not a federation's run directory (no config.yaml).")
    if resume and run.latest_checkpoint().is_file():
        done = int(load_checkpoint(run.latest_checkpoint()).get("round", 0))
        if done >= fed.rounds:
            raise ConfigError(f"{str(run.path)!r} already ran {done} rounds (federated.rounds = {fed.rounds}); "
                              f"pass --rounds larger than {done} to continue it.")
    load_dataset(cfg)  # a missing or malformed data source is a clear error here, not in a Flower thread


def small_site_warnings(sites: list[dict], batch_size: int) -> list[str]:
    """A line for every site with fewer training images than one batch (its every step sees its whole split)."""
    return [f"{s['site']} has {s['num_train']} training images, fewer than a batch (data.batch_size = {batch_size}): "
            f"each of its local steps sees its whole split as one smaller batch"
            for s in sites if not s["error"] and 0 < s["num_train"] < batch_size]


def _weighted(rows: list[dict], key: str) -> float | None:
    ok = [r for r in rows if r.get(key) is not None and not math.isnan(r[key]) and r.get("num_examples")]
    n = sum(r["num_examples"] for r in ok)
    return sum(r[key] * r["num_examples"] for r in ok) / n if n else None


class FederationRun:
    """One federation's run directory and the server's side of each round."""

    def __init__(self, raw: dict[str, Any], run_path: str | Path | None = None, resume: bool = False,
                 parent_pid: int | None = None):
        self.parent_pid = parent_pid  # the `gradprom federate` process that launched this run, if one did
        self.cfg, self.fed = cfg, fed = build_federation(raw, source="federation config")
        torch.set_num_threads(cfg.run.num_threads or 1)
        self.run = RunDir(run_path or run_path_for(raw))
        preflight(raw, self.run.path, resume)
        self.life = RunLifecycle(self.run, resume, resume_hint=f"`gradprom federate --resume {self.run.path}`")
        sets, self.info = load_dataset(cfg)
        self.models = new_models(cfg, self.info)
        self.metric = task_metric_name(cfg.task)
        deg = parse_degradation(cfg.data.degradation)
        self.held = {s: EnhancementDataset(sets[s], deg, cfg.task, cfg.seed, s) for s in ("val", "test")}
        self.done, rows, self.epoch_rows, elapsed = 0, [], [], 0.0
        if resume and self.run.latest_checkpoint().is_file():
            self.done, rows, elapsed = self._restore()
        self.recorder = RoundsRecorder(self.run, cfg.task, rows, elapsed)
        self.gate_info: dict[int, tuple[float, float]] = {}
        gate = make_server_gate(cfg, self.models, self.gate_info) if fed.gate_level == "server" else None
        common = dict(min_nodes=fed.min_connected, min_answers=fed.min_answers, fraction_train=fed.fraction_train,
                      evaluate_sites=fed.evaluate_sites, round_offset=self.done, server_gate=gate,
                      proximal_mu=fed.proximal_mu, eta=fed.server_lr, eta_l=cfg.optim.lr, tau=fed.server_tau)
        initial = self.initial_arrays()
        self.array_keys = list(initial)  # the order of the legacy (unnamed) arrays under SecAgg+
        if fed.secure_aggregation == "secagg+":  # Flower's SecAgg+ runs on its legacy strategies (secagg.py)
            self.strategy = build_secure_strategy(
                fed.strategy, self.recorder, keys=self.array_keys, initial=initial,
                round_config=round_config_fn(self.array_keys, self.round_config), evaluate_fn=self._evaluate_legacy,
                with_pair=fed.gate_level == "server", **common)
        else:
            self.strategy = build_strategy(
                fed.strategy, self.recorder, **common,
                updates_dir=self.run.path / "updates" if fed.record_updates else None, dp=fed.dp,
                dp_clipping_norm=fed.dp_clipping_norm, dp_noise_multiplier=fed.dp_noise_multiplier,
                dp_delta=fed.dp_delta, hospitals=fed.hospitals)

    def _restore(self) -> tuple[int, list[dict], float]:
        """The global model and tables of the last checkpointed round."""
        state = load_checkpoint(self.run.latest_checkpoint())
        try:
            self.models.enhancer.load_state_dict(state["enhancer"])
            self.models.recognizer.load_state_dict(state["recognizer"])
        except RuntimeError as e:
            raise ConfigError(f"--resume {str(self.run.path)!r}: its checkpoint does not fit the configuration "
                              f"({str(e).splitlines()[0][:200]}).") from None
        done = int(state["round"])
        rounds = self.run.path / "rounds.parquet"
        rows = [r for r in pq.read_table(rounds).to_pylist() if r["round"] <= done] if rounds.is_file() else []
        self.epoch_rows = [r for r in self.run.read_epochs() if r["split"] == "val" and r["epoch"] <= done]
        log.info("resuming %s after round %d of %d", self.run.path, done, self.fed.rounds)
        return done, rows, float(state.get("elapsed", 0.0))

    def initial_arrays(self) -> dict[str, Any]:
        """The global model the next round starts from."""
        return get_arrays(self.models)

    def round_config(self) -> dict[str, Any]:
        """Per-round values that travel in the message: a resumed run's round offset, the model's shape."""
        return {"round-offset": self.done, **info_to_config(self.info)}

    def _evaluate_legacy(self, server_round: int, arrays: list, config: dict) -> tuple[float, dict] | None:
        """`evaluate` for Flower's legacy strategies (unnamed arrays in the global model's order)."""
        metrics = self.evaluate(server_round, to_record(dict(zip(self.array_keys, arrays, strict=True))))
        if metrics is None:
            return None
        return float(metrics.get("loss_e", 0.0)), dict(metrics)

    @contextmanager
    def running(self) -> Iterator[None]:
        """The run header (sites table, run.json "running", config.yaml) and its terminal status; a stop asked
        for with `<run>/stop-requested` stops the federation after the round in flight."""
        STOP.clear()
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(done,), daemon=True)
        watcher.start()
        try:
            with self._header():
                yield
        finally:
            done.set()

    def _watch(self, done: threading.Event) -> None:
        """Between-rounds stop on `<run>/stop-requested`; exit if the launching `gradprom federate` is gone."""
        while not done.wait(0.5):
            if (self.run.path / STOP_FILE).is_file():
                STOP.set()
            if self.parent_pid and not process_alive(self.parent_pid):
                self._orphaned()

    def _orphaned(self) -> None:
        """`gradprom federate` is gone (killed): nobody will read this run's stream or stop its SuperLink, which
        died with it, so this simulation process would wait forever. Stop the processes it started (its Ray
        instance), mark the run stopped (its last checkpointed round resumes) and exit, before the round in
        flight could write anything more."""
        log.error("gradprom federate (pid %d) is gone: stopping the federation; its last checkpointed round "
                  "resumes with --resume", self.parent_pid)
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.run.write_run(status="stopped", end=now_iso(), error="the gradprom federate process was killed; "
                           f"continue it with `gradprom federate --resume {self.run.path}`")
        os._exit(1)

    def _header(self):
        cfg, fed, run = self.cfg, self.fed, self.run
        run.create()
        sites = describe_sites(cfg, fed)
        write_parquet(run.path / "sites.parquet", sites)
        for s in sites:
            if s["error"]:
                log.error("%s", s["error"])
        for warning in small_site_warnings(sites, cfg.data.batch_size):
            log.warning("%s", warning)
        header = dict(seed=cfg.seed, task=cfg.task, strategy=cfg.gradprom.strategy, tau=cfg.gradprom.tau,
                      **cfg.gate_variant, data=cfg.data.source, hospitals=fed.hospitals, rounds=fed.rounds,
                      fl_strategy=fed.strategy, gate_level=fed.gate_level, local_steps=fed.local_steps,
                      **privacy_header(fed), **secagg_header(fed),
                      versions=versions())
        return self.life.running("federated", header,
                                 save=lambda path: save_federation(saved_config(cfg), fed, path))

    def evaluate(self, server_round: int, record: ArrayRecord) -> MetricRecord | None:
        """Server-side evaluation of the global model each round; then the tables and the checkpoint."""
        if server_round == 0:
            return None
        cfg, fed, run, rec = self.cfg, self.fed, self.run, self.recorder
        rnd = server_round + self.done
        glob = from_record(record)
        val = evaluate_arrays(cfg, self.info, glob, self.held["val"])
        g_open, g_cos = self.gate_info.get(rnd, (None, None))
        rec.global_row(rnd, val, g_open, g_cos, aggregated=self.strategy.aggregated.get(rnd, 0) > 0,
                       needed=fed.min_answers)
        rec.write()
        if cfg.run.figures_every_epoch:
            save_rounds(run.figures / "rounds.png", rec.rows)
        site_rows = [r for r in rec.rows if r["round"] == rnd and r["site"] != "global" and r["status"] == "ok"]
        gate_rate = g_open if g_open is not None else _weighted(site_rows, "gate_open_rate")
        mean_cos = g_cos if g_cos is not None else _weighted(site_rows, "mean_cos")
        self.epoch_rows.append({"epoch": rnd, "split": "val", "step": rnd, **val, "gate_open_rate": gate_rate,
                                "mean_cos": mean_cos, "sites_ok": len(site_rows)})
        run.write_epochs(self.epoch_rows)
        set_arrays(self.models, glob)
        save_checkpoint(run.latest_checkpoint(), {
            "enhancer": self.models.enhancer.state_dict(), "recognizer": self.models.recognizer.state_dict(),
            "round": rnd, "epoch": rnd, "elapsed": rec.now(), "config": federation_dict(cfg, fed), "metrics": val})
        n_fail = sum(1 for r in rec.rows if r["round"] == rnd and r["status"] != "ok" and r["site"] != "global")
        log.info("round %d/%d: %d sites ok, %d failed/rejected; global val psnr %.2f dB, ssim %.3f, %s %.3f",
                 rnd, fed.rounds, len(site_rows), n_fail, val["psnr"], val["ssim"], self.metric, val[self.metric])
        return MetricRecord({k: float(v) for k, v in val.items() if v is not None and not math.isnan(v)})

    def finish(self) -> dict[str, float]:
        """The final global model (evaluate() loaded it) on the held-out test split; run.json "finished"."""
        test = evaluate_arrays(self.cfg, self.info, get_arrays(self.models), self.held["test"])
        self.epoch_rows.append({"epoch": self.fed.rounds, "split": "test", "step": self.fed.rounds, **test})
        self.run.write_epochs(self.epoch_rows)
        save_rounds(self.run.figures / "rounds.png", self.recorder.rows)
        extra = privacy_spent(self.strategy) if self.fed.dp != "none" else {}
        if extra.get("dp_epsilon") is not None:
            log.info("differential privacy: epsilon %.3f at delta %g after %d releases", extra["dp_epsilon"],
                     extra["dp_delta"], extra["dp_releases"])
        self.life.finished(test=test, **extra)
        return test
