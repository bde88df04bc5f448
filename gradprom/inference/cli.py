"""`gradprom enhance` and `gradprom export`: argument handling over pipeline.py, ray_batch.py and export.py.

enhance exits 0 when every input came out, 1 when some failed (each named in one line on stderr), and 2 for a
user mistake that stops the whole job (a bad run directory, --out not empty, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import BLENDS, FORMATS


def register(subparsers) -> None:
    """Add `enhance` and `export` to the main parser's sub-parsers."""
    p = subparsers.add_parser("enhance", help="enhance images, a .npz, DICOM or a store with a trained run",
                              description="Enhance SRC with RUN_DIR's enhancer into DIR, in SRC's own kind: PNG at "
                              "the input's bit depth, a .npz with the same keys, a derived DICOM series, or a new "
                              "store. Images of any size run by sliding windows of the training size; nothing is "
                              "resized. DIR gets a manifest, _enhance.json (input -> output, SHA-256).")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--input", required=True, metavar="SRC", help="an image folder or image (PNG/JPEG, 8/16-bit), "
                   "a .npz, a DICOM file or folder, or a store made by `gradprom data convert`")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    p.add_argument("--checkpoint", default="best", help="best | latest | a checkpoint path (default: best)")
    p.add_argument("--overlap", type=float, default=0.25, help="fraction of a window shared with its neighbours "
                   "(default 0.25)")
    p.add_argument("--blend", default="gaussian", choices=BLENDS, help="how overlapping windows are blended "
                   "(default gaussian)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="stores: enhance on N Ray Data actors "
                   "(0 = here, the default)")
    p.add_argument("--address", help="with --workers: join this Ray cluster ('auto' or HOST:PORT); default: start "
                   "a local Ray instance")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_enhance)

    p = subparsers.add_parser("export", help="export a run's enhancer (optionally with its recognizer) to ONNX or "
                              "TorchScript", description="Export RUN_DIR's enhancer, checked against PyTorch on "
                              "random and real inputs, with a sidecar FILE.json (run, preprocessing, versions).")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", metavar="FILE", help="the exported file (default: RUN_DIR/exports/enhancer.onnx or "
                   ".pt, which the dashboard's run page links)")
    p.add_argument("--checkpoint", default="best", help="best | latest | a checkpoint path (default: best)")
    p.add_argument("--recognizer", action="store_true", help="also output the recognizer's logits")
    p.set_defaults(func=cmd_export)


def cmd_enhance(args: argparse.Namespace) -> int:
    from gradprom.platform.errors import ConfigError

    from .pipeline import enhance_path
    from .runs import load_run
    from .sources import detect_kind

    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: expected 0 (here) or a number of Ray Data actors.")
    if args.address and not args.workers:
        raise ConfigError("--address joins a Ray cluster for --workers N; pass --workers too.")
    run = load_run(args.run, args.checkpoint, args.device)

    def report(failure) -> None:
        print(f"gradprom: error: {failure.message}", file=sys.stderr, flush=True)

    if args.workers:
        from pathlib import Path

        if detect_kind(Path(args.input)) != "store":
            raise ConfigError(f"--workers runs on Ray Data, which reads stores; {args.input!r} is not a store "
                              f"(convert it with `gradprom data convert`, or leave out --workers).")
        from .ray_batch import enhance_store_on_ray

        summary = enhance_store_on_ray(run, args.input, args.out, workers=args.workers, address=args.address,
                                       overlap=args.overlap, blend=args.blend, on_failure=report,
                                       progress=not args.no_progress)
    else:
        summary = enhance_path(run, args.input, args.out, overlap=args.overlap, blend=args.blend, on_failure=report,
                               progress=not args.no_progress)
    print(summary.line())
    print(f"manifest: {summary.manifest}")
    return 1 if summary.failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run
    from .runs import load_run

    run = load_run(args.run, args.checkpoint, "cpu")
    out = args.out or Path(args.run) / "exports" / ("enhancer" + (".onnx" if args.format == "onnx" else ".pt"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    result = export_run(run, args.format, out, recognizer=args.recognizer)
    for ch in result.checks:
        print(f"check {ch['input']} {tuple(ch['shape'])}: max abs diff vs PyTorch {ch['max_abs_diff']:.3g}")
    print(f"exported {result.file} ({args.format}, height/width {'dynamic' if result.dynamic else 'fixed'}); "
          f"sidecar {result.sidecar}")
    return 0
