"""The Ray Data path (read_parquet -> map_batches on an actor pool -> a new store) writes the same store as the
local path, on a 2-worker local Ray started and stopped by the test."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.inference.pipeline import enhance_path
from gradprom.platform.store.format import Store

from .test_outputs import make_store, read_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_data_path_equals_local_path(sr_run, local_ray, tmp_path):
    from gradprom.inference.ray_batch import enhance_store_on_ray

    src = make_store(tmp_path / "store", n=40, size=16)  # 80 rows: several batches of 32 over 2 actors
    local = enhance_path(sr_run, src.path, tmp_path / "local", progress=False)
    on_ray = enhance_store_on_ray(sr_run, src.path, tmp_path / "ray", workers=2, progress=False)
    assert local.images == on_ray.images == 80 and not on_ray.failures
    a, b = Store(tmp_path / "local"), Store(tmp_path / "ray")
    assert a.shape == b.shape == (1, 32, 32)
    assert a.rows() == b.rows() and {(p.site, p.split) for p in a.parts} == {(p.site, p.split) for p in b.parts}
    rows_a, rows_b = read_rows(a), read_rows(b)
    assert rows_a.keys() == rows_b.keys()
    for key in rows_a:
        np.testing.assert_array_equal(rows_a[key], rows_b[key])
    assert b.manifest["converts"][-1]["engine"] == "ray"
