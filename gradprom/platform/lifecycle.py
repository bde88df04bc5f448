"""The run lifecycle every driver shares (local, Ray Train, a federation): refuse a taken run directory, write
the header (run.json "running" + config.yaml), and close run.json as finished, stopped or failed.

    life = RunLifecycle(run, resume)           # ConfigError if the directory holds a run and resume is False
    ...build data and models (errors here leave no directory behind)...
    with life.running(kind="local", header={...}, save=lambda path: save_config(cfg, path)):
        ...train...
        life.finished(test=...)

The run's full log goes to `<run>/log.txt` while the block runs (platform/logs.py).
Leaving the block by Ctrl-C (or SIGTERM, which the CLI turns into the same exception) marks the run "stopped"
with a resume hint; any other exception marks it "failed" with the error; both re-raise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradprom.platform.errors import ConfigError
from gradprom.platform.logs import run_log
from gradprom.platform.rundir import RunDir, now_iso


class RunLifecycle:
    """run.json's status from start to end, for one run directory."""

    def __init__(self, run: RunDir, resume: bool, *, resume_hint: str = "--resume"):
        self.run, self.resume, self.resume_hint = run, resume, resume_hint
        if resume:
            run.set_aside_damaged_run_json()  # a resume rewrites run.json anyway; only its start time is lost
        if run.exists() and not resume:
            raise ConfigError(f"Run directory {str(run.path)!r} already holds a run; continue it with "
                              f"{resume_hint}, or choose another --name / --out.")

    @contextmanager
    def running(self, kind: str, header: dict[str, Any], save: Callable[[Path], None] | None = None,
                tree: bool = True) -> Iterator[None]:
        """Create the directory (with steps/, checkpoints/, figures/ unless `tree` is False: a Tune experiment
        has none), write run.json "running" (keeping a resumed run's start) and the config, run the block, and
        record how it ended."""
        run = self.run
        run.create() if tree else run.path.mkdir(parents=True, exist_ok=True)
        with run_log(run.path):
            yield from self._running(kind, header, save)

    def _running(self, kind: str, header: dict[str, Any], save: Callable[[Path], None] | None) -> Iterator[None]:
        run = self.run
        started = run.read_run().get("start") if self.resume else None
        run.write_run(name=run.path.name, kind=kind, status="running", start=started or now_iso(), end=None,
                      **header, error=None)
        if save is not None:
            save(run.config_yaml)
        try:
            yield
        except KeyboardInterrupt as e:
            why = str(e) or "interrupted by the user"
            run.write_run(status="stopped", end=now_iso(), error=f"{why}; continue it with {self.resume_hint}")
            raise
        except BaseException as e:
            run.write_run(status="failed", end=now_iso(), error=f"{type(e).__name__}: {e}")
            raise

    def finished(self, **fields: Any) -> dict[str, Any]:
        """Mark the run finished, with its final fields."""
        return self.run.write_run(status="finished", end=now_iso(), **fields)
