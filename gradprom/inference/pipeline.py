"""`gradprom enhance` from top to bottom: read the input, enhance each image, write it back in its own kind,
record it in the manifest, and report each bad input in one line while the rest goes on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from gradprom.platform.errors import ConfigError, DataError
from gradprom.platform.store.format import Store

from .enhance import ImageEnhancer
from .manifest import Manifest
from .options import BLENDS
from .runs import TrainedRun
from .sources import READERS, Failure, count_inputs, detect_kind
from .store_io import StoreOutput, enhance_batch, store_batches
from .writers import DicomWriter, NpzWriter, PngWriter

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What an enhance job did."""

    kind: str
    out: Path
    images: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    manifest: Path | None = None

    def line(self) -> str:
        """images, time, images/s (and failures) in one line."""
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        failed = f"; {len(self.failures)} input(s) failed" if self.failures else ""
        return (f"enhanced {self.images} images in {self.seconds:.1f} s ({rate:.1f} images/s){failed}; "
                f"output in {self.out}")


def image_enhancer(run: TrainedRun, overlap: float = 0.25, blend: str = "gaussian") -> ImageEnhancer:
    """The sliding-window enhancer of a loaded run; bad options are ConfigErrors."""
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"--overlap {overlap}: expected a fraction in [0, 1) of the window shared by neighbours.")
    if blend not in BLENDS:
        raise ConfigError(f"--blend {blend!r}: expected one of {', '.join(BLENDS)}.")
    return ImageEnhancer(run.enhancer, run.channels, run.scale, run.train_size, overlap, blend, run.device)


def job_header(run: TrainedRun, src: Path, kind: str, enhancer: ImageEnhancer, **extra) -> dict:
    """What the manifest (and a new store's provenance) records about the job."""
    return {"run": str(run.path), "checkpoint": str(run.checkpoint), "input": str(src), "kind": kind,
            "scale": run.scale, "window": list(enhancer.window), "overlap": enhancer.overlap,
            "blend": enhancer.blend, **extra}


def check_out(out: Path) -> None:
    """--out must be new or empty: an enhance job never overwrites earlier outputs."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {str(out)!r} exists and is not an empty directory; choose a new directory "
                          f"(outputs are never overwritten).")


def enhance_files(run: TrainedRun, src: Path, out: Path, enhancer: ImageEnhancer, kind: str,
                  on_failure: Callable[[Failure], None], progress: bool = True) -> Summary:
    """An image folder, a .npz or DICOM -> the same kind under `out`."""
    summary = Summary(kind, out)
    manifest = Manifest(out, job_header(run, src, kind, enhancer))
    writer = {"folder": lambda: PngWriter(out), "npz": lambda: NpzWriter(out, src, run.scale),
              "dicom": lambda: DicomWriter(out, run.scale, f"GradProm enhancer of run {run.name} "
                                                         f"(checkpoint {run.checkpoint.name}, x{run.scale})")}[kind]()

    def fail(f: Failure) -> None:
        summary.failures.append(f)
        manifest.failure(f.name, f.message)
        on_failure(f)

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    bar = tqdm(total=count_inputs(src, kind), desc=f"enhancing {src.name}", unit="input", dynamic_ncols=True,
               disable=None if progress else True)
    for item in READERS[kind](src):
        bar.update(1)
        if isinstance(item, Failure):
            fail(item)
            continue
        try:
            enhanced = np.stack([enhancer(f, item.name) for f in item.frames])
            files = writer.write(item, enhanced)
        except DataError as e:
            also = f" Its array `{item.meta['key']}` is left out of the output .npz." if kind == "npz" else ""
            fail(Failure(item.name, f"{e}{also}"))
            continue
        summary.images += len(item.frames)
        if files:
            manifest.output([item.name], [item.path] if item.path else [], files)
    bar.close()
    files = writer.close()
    if isinstance(writer, NpzWriter) and files:
        manifest.output([src.name], [src], files)
    summary.seconds = time.monotonic() - t0
    summary.manifest = manifest.write(images=summary.images, failed=len(summary.failures), seconds=summary.seconds)
    return summary


def local_store_batches(enhancer: ImageEnhancer, store: Store) -> Iterator[pa.Table]:
    """Enhanced row groups of a store, computed here."""
    for batch in store_batches(store):
        yield enhance_batch(enhancer, batch, store.shape)


def enhance_store(run: TrainedRun, src: Path, out: Path, enhancer: ImageEnhancer, results: Iterator[pa.Table],
                  on_failure: Callable[[Failure], None], progress: bool = True, engine: str = "local") -> Summary:
    """Enhanced row batches (`results`, from here or from Ray Data) -> a new store at `out`."""
    store = Store(src)
    summary = Summary("store", out)
    header = job_header(run, src, "store", enhancer, engine=engine)
    provenance = {"source": str(src.resolve()), "format": "store", "reader": "gradprom.enhance", **header}
    t0 = time.monotonic()
    bar = tqdm(total=store.rows(), desc=f"enhancing {src.name}", unit="img", dynamic_ncols=True,
               disable=None if progress else True)
    manifest = Manifest(out, header)
    with StoreOutput(out, store, run.scale, provenance) as output:
        for table in results:
            done, failed = output.add(table)
            summary.images += done
            for f in failed:
                summary.failures.append(f)
                manifest.failure(f.name, f.message)
                on_failure(f)
            bar.update(table.num_rows)
    bar.close()
    manifest.output([p.path for p in store.parts], [src / p.path for p in store.parts],
                    [out / p.path for p in Store(out).parts])
    summary.seconds = time.monotonic() - t0
    summary.manifest = manifest.write(images=summary.images, failed=len(summary.failures), seconds=summary.seconds)
    return summary


def enhance_path(run: TrainedRun, src: str | Path, out: str | Path, *, overlap: float = 0.25,
                 blend: str = "gaussian", on_failure: Callable[[Failure], None] | None = None,
                 progress: bool = True) -> Summary:
    """Enhance `src` (folder, image, .npz, DICOM, store) into `out`, locally."""
    src, out = Path(src), Path(out)
    kind = detect_kind(src)
    check_out(out)
    enhancer = image_enhancer(run, overlap, blend)
    on_failure = on_failure or (lambda f: log.warning("%s", f.message))
    if kind == "store":
        return enhance_store(run, src, out, enhancer, local_store_batches(enhancer, Store(src)), on_failure,
                             progress)
    return enhance_files(run, src, out, enhancer, kind, on_failure, progress)
