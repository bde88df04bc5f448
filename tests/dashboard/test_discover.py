"""Finding runs and reading their tables never raises: corrupt files become problems; paths stay inside."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from gradprom.dashboard import discover


def _run(path, **info):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"name": path.name, "kind": "local", "status": "finished", **info}))
    return path


def test_find_runs_nested_newest_first_and_flags_bad_json(tmp_path):
    _run(tmp_path / "a", start="2026-01-01T00:00:00+00:00")
    _run(tmp_path / "exp" / "trials" / "t1", start="2026-01-03T00:00:00+00:00")
    (tmp_path / "exp" / "run.json").write_text("{ not json")
    (tmp_path / "a" / "steps").mkdir()
    (tmp_path / "a" / "steps" / "run.json").write_text("{}")  # inside steps/: never a run
    runs = discover.find_runs(tmp_path)
    assert [r.id for r in runs] == ["exp/trials/t1", "a", "exp"]
    assert runs[-1].problems and "run.json is unreadable" in runs[-1].problems[0]
    assert discover.find_runs(tmp_path / "missing") == []


def test_truncated_parquet_is_a_problem_not_an_exception(tmp_path):
    run = _run(tmp_path / "r")
    (run / "steps").mkdir()
    for first in (1, 3):
        pq.write_table(pa.table({"step": [first, first + 1], "cos": [0.1, 0.2]}),
                       run / "steps" / f"part-{first:09d}-{first + 1:09d}.parquet")
    pq.write_table(pa.table({"epoch": [0], "split": ["val"], "psnr": [20.0]}), run / "epochs.parquet")
    data = (run / "epochs.parquet").read_bytes()
    (run / "epochs.parquet").write_bytes(data[: len(data) // 2])
    bad = run / "steps" / "part-000000001-000000002.parquet"
    bad.write_bytes(bad.read_bytes()[:20])
    (run / "steps" / ".part-000000005-000000006.parquet.x.tmp").write_bytes(b"half")  # a writer's temp file
    table, problems = discover.read_table(run / "epochs.parquet")
    assert table is None and "epochs.parquet is unreadable (truncated or corrupt)" in problems[0]
    steps, problems = discover.read_steps(run)
    assert steps.column("step").to_pylist() == [3, 4]
    assert len(problems) == 1 and problems[0].startswith("steps/part-000000001-000000002.parquet is unreadable")
    assert discover.read_table(run / "absent.parquet") == (None, [])


def test_cache_rereads_a_file_that_changed(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1]}), p)
    assert discover.read_table(p)[0].num_rows == 1
    pq.write_table(pa.table({"a": [1, 2, 3]}), p)
    os.utime(p, ns=(1, 10**18))  # a different mtime even on a coarse clock
    assert discover.read_table(p)[0].num_rows == 3


def test_safe_join_refuses_everything_outside(tmp_path):
    root = tmp_path / "runs"
    (root / "r" / "figures").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", root / "link")
    assert discover.safe_join(root, "r/figures") == (root / "r" / "figures").resolve()
    for bad in ["", "/etc/passwd", "../x", "r/../../x", "r/..", "link/x", "link", "r\\..\\x", "a\x00b", "//x"]:
        assert discover.safe_join(root, bad) is None, bad


def test_signature_changes_when_a_part_file_is_added(tmp_path):
    run = _run(tmp_path / "r")
    (run / "steps").mkdir()
    before = discover.signature(run)
    assert discover.signature(run) == before
    (run / "steps" / "part-000000001-000000001.parquet").write_bytes(b"x")
    assert discover.signature(run) != before
