"""Finding run directories under the runs root and reading their tables without ever raising.

A table that cannot be read (half-written by a writer that is not atomic, truncated by a full disk, corrupt)
comes back as a `Problem` for the page to show, never as an exception: the server must survive it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

log = logging.getLogger(__name__)

# what a run directory keeps beside its nested runs (a Tune experiment's trials/): never searched for runs
NOT_RUNS = {"steps", "checkpoints", "figures", "best", "ray", "tune", "report", "__pycache__"}
MAX_DEPTH = 4  # <runs>/<exp>/trials/<trial> is the deepest layout the platform writes


@dataclass
class Run:
    """One run directory: its id (path relative to the runs root), run.json and config.yaml."""

    id: str
    path: Path
    info: dict[str, Any]
    config: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.info.get("kind") or "unknown")


class TableCache:
    """Parquet tables keyed by path and (mtime, size), so polling re-reads only files that changed."""

    def __init__(self, max_entries: int = 512):
        self._lock = threading.Lock()
        self._items: dict[Path, tuple[tuple[int, int], pa.Table | None, str | None]] = {}
        self.max_entries = max_entries

    def read(self, path: Path) -> tuple[pa.Table | None, str | None]:
        """(table, None) or (None, problem); a missing file is (None, None)."""
        try:
            st = path.stat()
        except OSError:
            return None, None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._items.get(path)
            if hit is not None and hit[0] == key:
                return hit[1], hit[2]
        table, problem = read_parquet(path)
        with self._lock:
            if len(self._items) >= self.max_entries:
                self._items.pop(next(iter(self._items)))
            self._items[path] = (key, table, problem)
        return table, problem


CACHE = TableCache()
# libyaml's parser when PyYAML was built with it (about 10x faster on a run's config.yaml), else pure Python
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_parquet(path: Path) -> tuple[pa.Table | None, str | None]:
    """(table, None), or (None, problem) for a file that is truncated or corrupt; not cached."""
    try:
        # ParquetFile reads one file without the dataset machinery of pq.read_table: ~3x faster on small tables
        with pq.ParquetFile(path) as f:
            return f.read(use_threads=False), None
    except FileNotFoundError:
        return None, None
    except Exception as e:  # truncated or corrupt: pyarrow raises ArrowInvalid, OSError, ...
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        problem = f"{path.name} is unreadable (truncated or corrupt) and was skipped: {first}"
        log.warning("%s: %s", path, problem)
        return None, problem


def read_json(path: Path) -> tuple[dict[str, Any], str | None]:
    """A JSON object file as a dict, or ({}, problem)."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data, None
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as e:
        return {}, f"{path.name} is unreadable and was skipped: {e}"


def read_yaml(path: Path) -> tuple[dict[str, Any], str | None]:
    """A YAML mapping file as a dict, or ({}, problem)."""
    try:
        data = yaml.load(path.read_text(), Loader=YAML_LOADER) or {}
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        return data, None
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, yaml.YAMLError) as e:
        return {}, f"{path.name} is unreadable and was skipped: {str(e).splitlines()[0][:160]}"


def load_run(root: Path, path: Path) -> Run:
    """The run at `path` (which holds run.json)."""
    info, p1 = read_json(path / "run.json")
    config, p2 = read_yaml(path / "config.yaml")
    return Run(id=path.relative_to(root).as_posix(), path=path, info=info, config=config,
               problems=[p for p in (p1, p2) if p])


def find_runs(root: Path) -> list[Run]:
    """Every run directory under `root` (any depth up to MAX_DEPTH), newest start first."""
    runs: list[Run] = []
    if not root.is_dir():
        return runs

    def walk(d: Path, depth: int, in_run: bool) -> None:
        try:
            children = sorted(c for c in d.iterdir() if c.is_dir() and not c.is_symlink())
        except OSError:
            return
        for c in children:
            if c.name.startswith(".") or (in_run and c.name in NOT_RUNS):
                continue
            is_run = (c / "run.json").is_file()
            if is_run:
                runs.append(load_run(root, c))
            if depth < MAX_DEPTH:
                walk(c, depth + 1, is_run)

    walk(root, 1, False)
    runs.sort(key=lambda r: (str(r.info.get("start") or ""), r.id), reverse=True)
    return runs


def get_run(root: Path, run_id: str) -> Run | None:
    """The run with this id, or None if the id is not a run directory inside `root`."""
    path = safe_join(root, run_id)
    try:
        if path is None or not (path / "run.json").is_file():
            return None
    except OSError:  # e.g. ENAMETOOLONG, which Path.is_file does not swallow
        return None
    return load_run(root, path)


def safe_join(root: Path, rel: str) -> Path | None:
    """`root / rel` if it stays inside `root` after resolving symlinks; None for absolute paths, `..`,
    backslashes or anything that resolves outside."""
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
        return None
    parts = Path(rel).parts
    if any(p in ("..", "") for p in parts) or Path(rel).is_absolute():
        return None
    try:
        base = root.resolve()
        target = (base / rel).resolve()
    except (OSError, RuntimeError):  # a name too long for the file system, a symlink loop: nothing to serve
        return None
    if target != base and base not in target.parents:
        return None
    return target


def read_table(path: Path) -> tuple[pa.Table | None, list[str]]:
    """A Parquet table and the problems met reading it."""
    table, problem = CACHE.read(path)
    return table, [problem] if problem else []


def read_steps(run_path: Path) -> tuple[pa.Table | None, list[str]]:
    """All readable step part files of a run, concatenated in step order; unreadable parts are flagged."""
    steps = run_path / "steps"
    if not steps.is_dir():
        return None, []
    parts = sorted(p for p in steps.glob("part-*.parquet") if not p.name.startswith("."))
    tables, problems = [], []
    for p in parts:
        t, problem = CACHE.read(p)
        if problem:
            problems.append(f"steps/{problem}")
        elif t is not None and t.num_rows:
            tables.append(t)
    if not tables:
        return None, problems
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        return None, problems + [f"steps/ part files have incompatible columns: {e}"]
    if "step" in table.column_names:
        table = table.sort_by("step")
    return table, problems


def signature(path: Path, depth: int = 2) -> str:
    """A cheap fingerprint (names, sizes, mtimes) of a directory tree, to tell if anything changed."""
    out: list[tuple[str, int, int]] = []

    def walk(d: Path, level: int) -> None:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                st = e.stat()
            except OSError:
                continue
            out.append((str(e), st.st_size, st.st_mtime_ns))
            if e.is_dir() and level < depth and e.name != "checkpoints":
                walk(e, level + 1)

    walk(path, 0)
    return hashlib.sha1(repr(out).encode()).hexdigest()
