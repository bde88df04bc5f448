"""Enhance a store on Ray Data: `read_parquet` of the store's published parts -> `map_batches` with a pool of
actors, each holding the model once -> the enhanced rows stream back and are published as a new store.

Memory stays bounded on every node: Ray Data streams blocks (a few batches per actor in flight), and the
writer holds one row group per open part. Each actor runs `store_io.enhance_batch`, the very function of the
local path, with one torch thread, so the Ray path writes the same bytes as the local one (a test checks it).
The run directory, the input store and --out must be visible to the driver and the workers (a shared file
system on a cluster), like the run directories of `gradprom train --workers`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import ray
import torch
from ray.data.datasource.partitioning import Partitioning

from gradprom.platform.distributed.cluster import connect
from gradprom.platform.store.format import SCHEMA, Store

from .pipeline import Summary, check_out, enhance_store, image_enhancer
from .runs import TrainedRun, load_run
from .sources import Failure
from .store_io import enhance_batch

log = logging.getLogger(__name__)
BATCH_ROWS = 32  # rows per actor call: large enough to amortize the call, small enough to bound memory


class EnhanceActor:
    """One Ray Data actor: loads the run's enhancer once, then enhances batches of store rows."""

    def __init__(self, run_dir: str, checkpoint: str, overlap: float, blend: str, shape: tuple[int, int, int]):
        torch.set_num_threads(1)  # one CPU per actor; also keeps the numbers those of the local path
        self.enhancer = image_enhancer(load_run(run_dir, checkpoint, device="cpu"), overlap, blend)
        self.shape = shape

    def __call__(self, batch: pa.Table) -> pa.Table:
        return enhance_batch(self.enhancer, batch, self.shape)


def ray_results(run: TrainedRun, store: Store, workers: int, overlap: float, blend: str) -> Iterator[pa.Table]:
    """The enhanced row batches of `store`, computed by `workers` actors, in the store's row order."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # reads ask for no CPU: they are light I/O, and with N actors on N CPUs a 1-CPU read would wait forever
    ds = ray.data.read_parquet(store.part_paths(), partitioning=Partitioning("hive", base_dir=str(store.path)),
                               schema=SCHEMA, num_cpus=0)
    ds = ds.map_batches(EnhanceActor, batch_size=BATCH_ROWS, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                        fn_constructor_kwargs={"run_dir": str(run.path), "checkpoint": str(run.checkpoint),
                                               "overlap": overlap, "blend": blend, "shape": tuple(store.shape)})
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def enhance_store_on_ray(run: TrainedRun, src: str | Path, out: str | Path, *, workers: int,
                         address: str | None = None, overlap: float = 0.25, blend: str = "gaussian",
                         on_failure: Callable[[Failure], None] | None = None, progress: bool = True) -> Summary:
    """Enhance the store `src` into a new store `out` on `workers` Ray Data actors (a local Ray, or `address`)."""
    src, out = Path(src), Path(out)
    store = Store(src)
    check_out(out)
    enhancer = image_enhancer(run, overlap, blend)
    started = connect(address, workers + 1, run.cfg.distributed.timeout_s)  # + 1 CPU for Ray Data's reads
    try:
        return enhance_store(run, src, out, enhancer, ray_results(run, store, workers, overlap, blend),
                             on_failure or (lambda f: log.warning("%s", f.message)), progress, engine="ray")
    finally:
        if started:
            ray.shutdown()
