"""Run directory: atomic writes, step part files, truncation on resume, checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from gradprom.platform.atomic import atomic_path
from gradprom.platform.checkpoint import load_checkpoint, save_checkpoint
from gradprom.platform.errors import DataError
from gradprom.platform.rundir import RunDir, StepWriter, step_parts


def test_step_writer_parts_and_truncate(tmp_path):
    run = RunDir(tmp_path / "r")
    run.create()
    w = StepWriter(run.steps, flush_seconds=1e9)
    for s in range(1, 8):
        w.append({"step": s, "epoch": (s - 1) // 3, "cos": 0.1 * s})
        if s % 3 == 0:
            w.flush()
    w.flush()
    assert [p.name for p in step_parts(run.steps)] == ["part-000000001-000000003.parquet",
                                                      "part-000000004-000000006.parquet",
                                                      "part-000000007-000000007.parquet"]
    assert run.read_steps()["step"].to_pylist() == list(range(1, 8))
    run.truncate_steps(4)
    assert run.read_steps()["step"].to_pylist() == [1, 2, 3, 4]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_run_json_merges(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_run(status="running", seed=1)
    run.write_run(status="finished")
    assert run.read_run() == {"status": "finished", "seed": 1}


def test_checkpoint_round_trip_and_damage(tmp_path):
    p = tmp_path / "c.pt"
    state = {"enhancer": {"w": torch.ones(3)}, "epoch": 2, "config": {"a": [1, 2]}}
    save_checkpoint(p, state)
    back = load_checkpoint(p)
    assert back["epoch"] == 2 and torch.equal(back["enhancer"]["w"], torch.ones(3))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="damaged"):
        load_checkpoint(p)
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_checkpoint_refuses_pickled_code(tmp_path):
    """weights_only=True: an object that would run code on load is refused, not executed."""
    p = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"enhancer": Evil()}, p)
    with pytest.raises(DataError):
        load_checkpoint(p)


def test_epoch_rows_with_different_columns_keep_every_column(tmp_path):
    """A train row without psnr followed by a val row with it: nothing may be dropped."""
    run = RunDir(tmp_path / "r")
    rows = [{"epoch": 0, "split": "train", "loss_e": 0.1},
            {"epoch": 0, "split": "val", "loss_e": 0.2, "psnr": 25.0, "accuracy": 0.5}]
    run.write_epochs(rows)
    back = run.read_epochs()
    assert back[1]["psnr"] == 25.0 and back[1]["accuracy"] == 0.5
    assert back[0]["psnr"] is None
