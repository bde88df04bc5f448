"""The runs index: rows come from the cache while a run's files are unchanged, are rebuilt when one changes
(rewritten atomically as the engine does, or in place), refreshes never overlap, and Tune trials are folded
under their experiment."""

from __future__ import annotations

import json
import os
import threading
import time

import yaml

from gradprom.dashboard import discover
from gradprom.dashboard.index import RunIndex
from gradprom.dashboard.rows import run_row, sites_text
from gradprom.platform.rundir import write_parquet


def _run(path, tau: float = 0.1, psnr: float = 20.0, **info):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"name": path.name, "kind": "local", "status": "finished",
                                               "start": "2026-01-01T00:00:00+00:00", **info}))
    (path / "config.yaml").write_text(yaml.safe_dump({"task": "classification",
                                                      "gradprom": {"strategy": "gradprom", "tau": tau}}))
    write_parquet(path / "epochs.parquet", [{"epoch": 1, "split": "val", "psnr": psnr, "ssim": 0.5}])
    return path


def _by_id(snap):
    return {r["id"]: r for r in snap.rows}


def test_rows_come_from_the_cache_until_a_file_changes(tmp_path):
    for i in range(3):
        _run(tmp_path / f"r{i}", status="running" if i == 2 else "finished")
    index = RunIndex(tmp_path, run_row)
    first = index.refresh()
    assert set(_by_id(first)) == {"r0", "r1", "r2"} and index.rows_built == 3
    again = index.refresh()
    assert again.version == first.version and index.rows_built == 3  # nothing re-parsed

    # the engine's way: a new epochs.parquet written to a temp file and renamed over the old one
    write_parquet(tmp_path / "r1" / "epochs.parquet", [{"epoch": 1, "split": "val", "psnr": 31.5, "ssim": 0.5}])
    snap = index.refresh()
    assert index.rows_built == 4 and snap.version != first.version
    assert _by_id(snap)["r1"]["best_psnr"] == 31.5 and _by_id(snap)["r0"]["best_psnr"] == 20.0

    # an edit in place (same directory mtime) of a running run: the file's own mtime and size still tell
    cfg = tmp_path / "r2" / "config.yaml"
    dir_mtime = os.stat(tmp_path / "r2").st_mtime_ns
    cfg.write_text(yaml.safe_dump({"task": "classification", "gradprom": {"strategy": "joint", "tau": 0.25}}))
    os.utime(tmp_path / "r2", ns=(dir_mtime, dir_mtime))
    snap = index.refresh()
    assert index.rows_built == 5 and _by_id(snap)["r2"]["tau"] == 0.25

    # a new run appears, a removed one goes
    _run(tmp_path / "r3")
    (tmp_path / "r0" / "run.json").unlink()
    snap = index.refresh()
    assert set(_by_id(snap)) == {"r1", "r2", "r3"} and index.rows_built == 6


def test_a_refresh_never_starts_while_one_runs(tmp_path):
    _run(tmp_path / "slow")
    release, calls = threading.Event(), []

    def slow_row(run):  # the real row, after a wait: a refresh that outlasts many polls
        calls.append(run.id)
        release.wait(30)
        return run_row(run)

    index = RunIndex(tmp_path, slow_row)
    polls = [index.snapshot(max_age=0, wait=0.01) for _ in range(20)]
    assert polls == [None] * 20  # every poll answered at once, none with a second refresh
    workers = [t for t in threading.enumerate() if t.name == "gradprom-runs-index"]
    assert len(workers) == 1 and calls == ["slow"]
    release.set()
    deadline = time.monotonic() + 30
    snap = None
    while snap is None and time.monotonic() < deadline:
        snap = index.snapshot(max_age=60, wait=1)
    assert snap is not None and [r["id"] for r in snap.rows] == ["slow"] and calls == ["slow"]
    assert index.snapshot(max_age=60, wait=1) is snap  # fresh enough: no new refresh


def test_tune_trials_are_folded_under_their_experiment(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "run.json").write_text(json.dumps({"name": "exp", "kind": "tune", "status": "running"}))
    _run(exp / "trials" / "trial_00000")
    _run(tmp_path / "exp2" / "trials" / "t")  # not under a Tune experiment: an ordinary nested run
    snap = RunIndex(tmp_path, run_row).refresh()
    assert sorted(_by_id(snap)) == ["exp", "exp2/trials/t"]
    assert discover.get_run(tmp_path, "exp/trials/trial_00000") is not None  # its page still opens


def test_the_c_yaml_loader_is_used_when_pyyaml_has_it():
    assert discover.YAML_LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_sites_text_names_the_noise_ramp_or_the_specs():
    assert sites_text(["gaussian:sigma=0.05", "gaussian:sigma=0.1", "gaussian:sigma=0.2"]) == "3 sites, σ 0.05–0.2"
    assert sites_text(["gaussian:sigma=0.1"] * 2) == "2 sites, σ 0.1"
    assert sites_text(["lowdose", "gaussian:sigma=0.1", "lowdose"]) == "3 sites, lowdose; gaussian:sigma=0.1"
    assert sites_text([]) == ""
