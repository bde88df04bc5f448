"""`gradprom data convert | check | show`: bring real data into the Parquet store, validate it, look at it.

Each handler returns the exit code; user mistakes raise DataError/ConfigError, which the main CLI prints as
one paragraph ("gradprom: error: ...") with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradprom.help_format import DefaultsHelpFormatter


def register(subparsers) -> None:
    """Add the `data` command and its sub-commands to the main parser's sub-parsers."""
    data = subparsers.add_parser("data", help="convert MedMNIST/.npz, image folders and DICOM into a Parquet store; "
                                 "check it; show samples", description="Data tools for the GradProm Parquet store.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("convert", help="convert a source into a store (created, or appended to as a new site)",
                       description="Convert SRC into the store OUT. A second conversion into the same OUT adds its "
                                   "site and keeps what is there; nothing is published unless the whole source "
                                   "converts.",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("src", metavar="SRC", help="a MedMNIST .npz, an image folder with labels.csv, or DICOM file(s)")
    p.add_argument("out", metavar="OUT", help="the store directory (new, or an existing store to add to)")
    p.add_argument("--format", default="auto", choices=["auto", "medmnist", "folder", "dicom"],
                   help="what SRC is (auto: by its suffix and contents)")
    p.add_argument("--site", help="site name for every image (default: a CSV `site` column, else SRC's name)")
    p.add_argument("--split-by", default="auto", metavar="RULE",
                   help="auto (the source's own splits, else random) | source | random[:T,V,S] | train | val | test")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    p.add_argument("--labels", metavar="CSV", help="labels CSV (folder: default SRC/labels.csv; DICOM: optional, "
                   "`file` naming a file or series folder)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="bring every image to H x W "
                   "(resized unless --crop); without it, images of different shapes are an error")
    fit = p.add_mutually_exclusive_group()
    fit.add_argument("--resize", dest="fit", action="store_const", const="resize",
                     help="with --size: bilinear, antialiased resize (the default)")
    fit.add_argument("--crop", dest="fit", action="store_const", const="crop", help="with --size: center crop")
    p.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"),
                   help="DICOM window after rescale (default: the file's own, else its min..max)")
    p.add_argument("--axis", type=int, default=0, choices=[0, 1, 2],
                   help="DICOM volumes: slice along frames/slices (0), rows (1) or columns (2)")
    p.add_argument("--num-classes", type=int, help="refuse labels outside 0..K-1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-duplicates", action="store_true", help="add images whose content the store already "
                   "holds (refused by default: converting the same file twice would count it twice)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("check", help="validate a store: schema, shapes, ranges, NaN/Inf, labels, duplicates, leakage",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("store", metavar="STORE", help="the store directory (made by `gradprom data convert`)")
    p.add_argument("--strict", action="store_true", help="warnings (orphan files, classes missing from train) fail "
                   "the check too; duplicate images are errors unless converted with --allow-duplicates")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("show", help="a PNG grid of samples per site and class",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("store", metavar="STORE", help="the store directory (made by `gradprom data convert`)")
    p.add_argument("--out", help="PNG to write (default: <STORE>-samples.png beside the store)")
    p.add_argument("--per-row", type=int, default=8, help="images per (site, class) row")
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split (default: all)")
    p.set_defaults(func=cmd_show)


def _console():
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=120)  # piped: do not squeeze tables into 80 columns


def cmd_convert(args: argparse.Namespace) -> int:
    from rich.table import Table

    from gradprom.platform.data.readers import ReadOptions
    from gradprom.platform.store.convert import convert
    from gradprom.platform.store.format import Store

    opts = ReadOptions(labels=args.labels, window=tuple(args.window) if args.window else None, axis=args.axis)
    s = convert(args.src, args.out, fmt=args.format, site=args.site, split_by=args.split_by, seed=args.seed,
                size=tuple(args.size) if args.size else None, fit=args.fit, options=opts,
                num_classes=args.num_classes, progress=not args.no_progress, allow_duplicates=args.allow_duplicates)
    t = Table(title=f"added to {args.out} · images {s.shape[0]}x{s.shape[1]}x{s.shape[2]} (C x H x W)")
    for col in ("site", "split", "images", "classes (count)", "masks"):
        t.add_column(col, justify="left" if col in ("site", "split", "classes (count)") else "right")
    order = {"train": 0, "val": 1, "test": 2}
    for key in sorted(s.rows, key=lambda k: (k[0], order[k[1]])):
        cls = s.classes.get(key)
        t.add_row(key[0], key[1], str(s.rows[key]),
                  " ".join(f"{k}:{n}" for k, n in sorted(cls.items())) if cls else "-", str(s.masks.get(key, 0)))
    con = _console()
    con.print(t)
    store = Store(args.out)
    for site in sorted({k[0] for k in s.rows}):
        missing = [sp for sp in ("train", "test") if not store.select(sp, [site])]
        if missing:  # training on this site alone would fail; say so now, not at train time
            con.print(f"note: site {site} has no {' and no '.join(missing)} images (see --split-by)")
    con.print(f"store {args.out}: {store.rows()} images in sites {', '.join(store.sites())}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from gradprom.platform.store.check import check_store

    rep = check_store(args.store)
    con = _console()
    if rep.rows:
        t = Table(title=f"{args.store} · shape {rep.shape}")
        for col in ("site", "split", "images", "classes (count)"):
            t.add_column(col, justify="right" if col == "images" else "left")
        order = {"train": 0, "val": 1, "test": 2}
        for (site, split), n in sorted(rep.rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 3))):
            cls = rep.classes.get((site, split))
            t.add_row(site, split, str(n), " ".join(f"{k}:{v}" for k, v in sorted(cls.items())) if cls else "-")
        con.print(t)
    for f in rep.findings:
        # soft wrap: one finding per line, whole, so it can be grepped and logged
        con.print(f"[{'red' if f.level == 'error' else 'yellow'}]{f.level}[/] ({f.kind}) {escape(f.message)}",
                  highlight=False, soft_wrap=True, markup=True)
    for (level, kind), n in sorted(rep.counts.items()):
        if n > 5:
            con.print(f"... and {n - 5} more {level}s of kind {kind}")
    failed = rep.errors > 0 or (args.strict and rep.warnings > 0)
    con.print(f"{'FAILED' if failed else 'OK'}: {rep.errors} errors, {rep.warnings} warnings")
    return 1 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    from gradprom.platform.store.show import save_grid

    out = Path(args.out) if args.out else Path(args.store.rstrip("/") + "-samples.png")
    save_grid(args.store, out, per_row=args.per_row, split=args.split)
    print(f"wrote {out}")
    return 0
