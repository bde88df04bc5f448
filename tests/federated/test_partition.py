"""Hospitals: the partitioner's sites differ in noise, case mix and size, reproducibly; describe; bad input."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from gradprom.federated.config import build_federation
from gradprom.federated.export import export_sites
from gradprom.federated.partition import (
    describe_sites,
    info_from_config,
    info_to_config,
    load_dataset,
    load_site,
    split_indices,
)
from gradprom.platform.errors import ConfigError, DataError

from ._fed import TINY


def fed(**kw):
    return build_federation({**TINY, "federated": kw})


def test_sites_cover_the_training_split_once_and_differ():
    cfg, f = fed(hospitals=4, dirichlet_alpha=0.3, size_skew=0.5)
    sites = [load_site(cfg, f, k) for k in range(4)]
    assert sum(len(s.train) + len(s.val) for s in sites) == cfg.data.num_train
    imgs = np.concatenate([np.concatenate([s.train.images, s.val.images]) for s in sites])
    assert len(np.unique(imgs.reshape(len(imgs), -1), axis=0)) == cfg.data.num_train  # no image twice
    assert len({len(s.train) for s in sites}) > 1  # unequal sizes
    mixes = np.array([s.class_mix(cfg.data.num_classes) for s in sites])
    assert np.allclose(mixes.sum(1), 1.0) and np.ptp(mixes, axis=0).max() > 0.2  # skewed case mix
    assert [s.degradation for s in sites] == ["gaussian:sigma=0.05", "gaussian:sigma=0.1", "gaussian:sigma=0.15",
                                              "gaussian:sigma=0.2"]
    again = load_site(cfg, f, 2)
    assert np.array_equal(again.train.images, sites[2].train.images)  # every process computes the same split


def test_dirichlet_alpha_controls_the_case_mix():
    labels = np.repeat(np.arange(3), 300)
    spread = {}
    for alpha in (0.1, 100.0):
        parts = split_indices(labels, len(labels), 4, alpha, 0.0, seed=0)
        mix = np.array([np.bincount(labels[p], minlength=3) / len(p) for p in parts])
        spread[alpha] = np.abs(mix - 1 / 3).mean()
    assert spread[0.1] > 3 * spread[100.0]


def test_site_overrides_and_own_data_file(tmp_path):
    cfg, f = fed(hospitals=2, sites={1: {"degradation": "lowdose"}})
    paths = export_sites(cfg, f, tmp_path / "sites")
    assert [p.name for p in paths] == ["hospital-0.npz", "hospital-1.npz"]
    cfg, f = fed(hospitals=2, sites={1: {"degradation": "lowdose", "data": str(paths[1])}})
    own = load_site(cfg, f, 1)
    part = load_site(*fed(hospitals=2), 1)
    assert own.degradation == "lowdose" and own.source == str(paths[1])
    assert np.allclose(own.train.images, part.train.images, atol=1e-6) and len(own.val) == len(part.val)
    # a file that does not fit the federation's model is refused, naming the site and the file
    _, info = load_dataset(cfg)
    assert load_site(cfg, f, 1, expect=info_from_config(info_to_config(info))).source == str(paths[1])
    bigger = replace(info, image_size=(64, 64))
    with pytest.raises(DataError, match=r"hospital-1: its data file .*hospital-1.npz.* 32x32 images.* 64x64"):
        load_site(cfg, f, 1, expect=bigger)


def test_missing_or_corrupt_site_data_names_the_site_and_the_file(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip")
    cfg, f = fed(hospitals=3, sites={1: {"data": str(tmp_path / "nowhere.npz")}, 2: {"data": str(bad)}})
    for k, path in ((1, "nowhere.npz"), (2, "broken.npz")):
        with pytest.raises(DataError, match=rf"hospital-{k}: .*{path}"):
            load_site(cfg, f, k)
    rows = describe_sites(cfg, f)
    assert rows[0]["error"] is None and rows[0]["num_train"] > 0
    assert "hospital-1" in rows[1]["error"] and "hospital-2" in rows[2]["error"]


@pytest.mark.parametrize("federated, message", [
    ({"hospitals": 0}, "federated.hospitals"),
    ({"hospitals": 2, "sites": {5: {"tau": 0.1}}}, "names site 5"),
    ({"strategy": "fedsgd"}, "federated.strategy"),
    ({"sites": {0: {"tau": 3}}}, "federated.sites.0.tau"),
    ({"sites": {0: {"strategy": "nonsense"}}}, "federated.sites.0.strategy"),
    ({"noise_min": 0.3, "noise_max": 0.1}, "noise_min"),
    ({"bogus": 1}, "unknown config field `federated.bogus`"),
])
def test_bad_federation_config_is_a_clear_error(federated, message):
    with pytest.raises(ConfigError, match=message):
        build_federation({**TINY, "federated": federated})


def test_too_few_images_for_the_hospitals():
    with pytest.raises(DataError, match="cannot be split into 40 hospitals"):
        load_site(*fed(hospitals=40), 0)


def test_describe_prints_the_sites_table_and_bad_input_exits_2(tmp_path):
    gp = [sys.executable, "-m", "gradprom.cli"]
    out = subprocess.run([*gp, "federate", "--describe", "--hospitals", "3", "--set", "data.num_train=64",
                          "--set", "data.image_size=32"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for k in range(3):
        assert f"hospital-{k}" in out.stdout
    assert "gaussian:sigma=0.125" in out.stdout and "class mix" in out.stdout
    bad = subprocess.run([*gp, "federate", "--describe", "--strategy", "fedsgd"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "federated.strategy" in bad.stderr and "Traceback" not in bad.stderr


def test_a_store_with_sites_keeps_its_real_hospitals(tmp_path):
    from gradprom.platform.data.phantoms import make_phantoms
    from gradprom.platform.store.convert import convert

    sizes = {"north": 12, "south": 7}
    for seed, (site, n) in enumerate(sizes.items()):
        arrays = {}
        for split, k, off in (("train", n, 0), ("val", 4, 1000), ("test", 4, 2000)):
            ph = make_phantoms(k, seed, 32, 3, 0.06, off)
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = ph.images[:, 0], ph.labels
        np.savez(tmp_path / f"{site}.npz", **arrays)
        convert(tmp_path / f"{site}.npz", tmp_path / "store", site=site, progress=False)
    raw = {**TINY, "data": {**TINY["data"], "source": str(tmp_path / "store")}}
    cfg, f = build_federation({**raw, "federated": {"hospitals": 2, "use_store_sites": True}})
    assert [len(load_site(cfg, f, k).train) + len(load_site(cfg, f, k).val) for k in range(2)] == [12, 7]
    cfg, f = build_federation({**raw, "federated": {"hospitals": 3, "use_store_sites": True}})
    with pytest.raises(ConfigError, match="the store has 2 sites"):
        load_site(cfg, f, 0)
