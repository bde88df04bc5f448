"""The runs table of a runs directory, kept up to date cheaply enough for tens of thousands of runs.

Two caches make a refresh where nothing changed cost about one `stat` per directory:
- each directory's listing, keyed by the directory's mtime (it changes when an entry is added, removed or
  renamed, which is how the engine writes every file: temp + rename);
- each run's row, keyed by the (mtime, size) of the files it is made of (run.json, config.yaml, epochs.parquet,
  trials.parquet, sites.parquet), so a file rewritten in place is noticed too. A run whose run.json says it is
  finished, failed or stopped is only re-checked when its directory's mtime changes (the engine writes into
  it again only by rename, e.g. `--resume` or `evaluate`): at 20,000 runs the per-file stats would cost more
  than the rest of the refresh together.

Refreshes run one at a time in a background thread: a page's poll never starts a second one and never waits
longer than it is told, so a refresh that outlasts the poll interval (the first one over 20,000 runs) cannot
starve the page; the page shows the last finished table meanwhile. Tune trials (`<experiment>/trials/<id>`)
are folded under their experiment: the experiment's row speaks for them and its page lists them.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .discover import MAX_DEPTH, NOT_RUNS, Run, load_run

# the files a run's row is computed from; a change to any of them recomputes the row
ROW_FILES = ("run.json", "config.yaml", "epochs.parquet", "trials.parquet", "sites.parquet")
TRIALS = "trials"  # a Tune experiment's trial run directories (tuning/trainable.py)
FINAL = {"finished", "failed", "stopped"}  # statuses in which the engine no longer writes a run's files

Row = dict[str, Any]
RowFn = Callable[[Run], tuple[Row, list[str]]]


@dataclass
class _Listing:
    """A directory's sub-directories and which ROW_FILES it holds, as of its mtime."""

    mtime_ns: int
    subdirs: list[str]
    files: tuple[str, ...]


@dataclass
class _Cached:
    """A run's row and what it was computed from."""

    dir_mtime: int
    key: tuple
    row: Row
    problems: list[str]
    kind: str
    final: bool  # finished, failed or stopped: its files change only by rename (which changes dir_mtime)
    start: str


@dataclass
class Snapshot:
    """One finished refresh: a version that changes whenever any row does, the rows and the page's notices."""

    version: str
    rows: list[Row]
    problems: list[str]
    runs: int
    seconds: float


class RunIndex:
    """The rows of the runs table under `root`, computed by `row_fn` and cached as described above."""

    def __init__(self, root: Path, row_fn: RowFn):
        self.root = Path(root)
        self.row_fn = row_fn
        self._dirs: dict[str, _Listing] = {}
        self._rows: dict[str, _Cached] = {}
        self._token = secrets.token_hex(4)  # versions of an earlier server never match this one's
        self._generation = 0
        self._state = threading.Lock()
        self._refreshing = threading.Lock()
        self._worker: threading.Thread | None = None
        self._snapshot: Snapshot | None = None
        self._last: Snapshot | None = None  # what the last refresh built
        self._taken = 0.0
        self.rows_built = 0  # rows computed from the files (not from the cache), for tests and benchmarks

    # --- one refresh (paths are strings here: with 20,000 runs, pathlib's joins cost more than the stats) ---
    def _list(self, d: str) -> _Listing | None:
        """The directory's listing, re-read only when its mtime changed."""
        try:
            mtime = os.stat(d).st_mtime_ns
        except OSError:
            self._dirs.pop(d, None)
            return None
        hit = self._dirs.get(d)
        if hit is not None and hit.mtime_ns == mtime:
            return hit
        subdirs, files = [], []
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    try:
                        if e.is_dir(follow_symlinks=False):
                            subdirs.append(e.name)
                        elif e.name in ROW_FILES and e.is_file(follow_symlinks=False):
                            files.append(e.name)
                    except OSError:
                        continue
        except OSError:
            return None
        listing = _Listing(mtime, sorted(subdirs), tuple(sorted(files)))
        self._dirs[d] = listing
        return listing

    def _row(self, path: str, listing: _Listing) -> _Cached:
        """The run at `path`, from the cache when none of its files changed (see the module docstring)."""
        hit = self._rows.get(path)
        if hit is not None and hit.final and hit.dir_mtime == listing.mtime_ns:
            return hit  # a finished run changes only by a rename into its directory: no file to stat
        key = []
        for name in listing.files:
            try:
                st = os.stat(f"{path}/{name}")
                key.append((st.st_mtime_ns, st.st_size))
            except OSError:
                key.append(None)
        key_t = (listing.files, *key)
        if hit is not None and hit.key == key_t:
            hit.dir_mtime = listing.mtime_ns
            return hit
        run = load_run(self.root, Path(path))
        row, problems = self.row_fn(run)
        self.rows_built += 1
        final = str(run.info.get("status") or "") in FINAL
        cached = _Cached(listing.mtime_ns, key_t, row, problems, run.kind, final, str(row.get("start") or ""))
        self._rows[path] = cached
        return cached

    def refresh(self) -> Snapshot:
        """Walk the runs directory and rebuild the rows whose files changed."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> Snapshot:
        t0 = time.perf_counter()
        rows: list[tuple[str, str, Row]] = []
        problems: list[str] = []
        seen: set[str] = set()
        listed: set[str] = set()
        changed = False
        built_before = self.rows_built

        def walk(d: str, listing: _Listing, depth: int, in_run: bool, in_tune: bool) -> None:
            for name in listing.subdirs:
                if (in_run and name in NOT_RUNS) or (in_tune and name == TRIALS):
                    continue  # a Tune experiment's trials are folded under it: its row and page speak for them
                c = f"{d}/{name}"
                listed.add(c)
                sub = self._list(c)
                if sub is None:
                    continue
                is_run = "run.json" in sub.files
                kind = ""
                if is_run:
                    hit = self._row(c, sub)
                    seen.add(c)
                    kind = hit.kind
                    rows.append((hit.start, hit.row["id"], hit.row))
                    problems.extend(hit.problems)
                if depth < MAX_DEPTH and sub.subdirs:
                    walk(c, sub, depth + 1, is_run, kind == "tune")

        top = self._list(str(self.root))
        if top is not None:
            walk(str(self.root), top, 1, False, False)
        gone = [p for p in self._rows if p not in seen]
        for p in gone:
            del self._rows[p]
        changed |= bool(gone)
        for d in [d for d in self._dirs if d not in listed and d != str(self.root)]:
            del self._dirs[d]  # removed, or no longer walked
        changed |= self.rows_built != built_before or len(seen) != (self._last.runs if self._last else -1)
        if not changed and self._last is not None:  # same rows, same order: the last table as it was
            return Snapshot(self._last.version, self._last.rows, self._last.problems, len(seen),
                            time.perf_counter() - t0)
        self._generation += 1
        rows.sort(key=lambda t: (t[0], t[1]), reverse=True)
        self._last = Snapshot(f"{self._token}:{self._generation}", [r for _, _, r in rows], problems, len(seen),
                              time.perf_counter() - t0)
        return self._last

    # --- what a page's poll calls -------------------------------------------------------------------------
    def snapshot(self, max_age: float, wait: float) -> Snapshot | None:
        """The latest rows. Starts a refresh in the background when the last one is older than `max_age`
        seconds and none is running, then waits at most `wait` seconds for it; None before the first ends."""
        with self._state:
            stale = self._snapshot is None or time.monotonic() - self._taken >= max_age
            if stale and self._worker is None:
                self._worker = threading.Thread(target=self._refresh_in_background, name="gradprom-runs-index",
                                                daemon=True)
                self._worker.start()
            worker = self._worker
        if worker is not None and wait > 0:
            worker.join(wait)
        with self._state:
            return self._snapshot

    def _refresh_in_background(self) -> None:
        try:
            snap = self.refresh()
        except Exception:  # never leave the page without a worker: log it, the next poll tries again
            import logging

            logging.getLogger(__name__).exception("refreshing the runs table failed")
            snap = None
        with self._state:
            if snap is not None:
                self._snapshot = snap
            self._taken = time.monotonic()
            self._worker = None
