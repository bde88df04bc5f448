"""The federation's ServerApp: Flower glue over the federation driver (driver.py).

Each round: sites train (client_app.py), the wrapped Flower strategy aggregates (strategy.py; under
`secure_aggregation: secagg+` Flower's SecAgg+ workflow with the legacy twin of the strategy, secagg.py), sites
evaluate the new global model on their own splits, and the driver evaluates it on the server's held-out split and
keeps the run directory. A stopped federation resumes from its last checkpointed round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from .config import from_run_config
from .console import federation_console
from .driver import FederationRun, preflight, run_path_for
from .secagg import run_secure
from .strategy import to_record

__all__ = ["app", "preflight", "run_path_for", "run_server"]


def run_server(grid: Grid, context: Context, raw: dict[str, Any], run_path: str | Path | None = None,
               resume: bool = False, parent_pid: int | None = None) -> Path:
    """Run (or resume) the federation described by `raw` on `grid` (the ServerApp's context); returns the run
    directory. `parent_pid`: the `gradprom federate` process; the run stops if it dies."""
    fr = FederationRun(raw, run_path, resume, parent_pid)
    rounds = fr.fed.rounds - fr.done
    with fr.running():
        if fr.fed.secure_aggregation == "secagg+":  # Flower's DefaultWorkflow + SecAgg+ (legacy path, secagg.py)
            run_secure(grid, context, fr.strategy, fr.fed, rounds)
        else:
            fr.strategy.start(grid=grid, initial_arrays=to_record(fr.initial_arrays()), num_rounds=rounds,
                              timeout=fr.fed.round_timeout_s, train_config=ConfigRecord(fr.round_config()),
                              evaluate_config=ConfigRecord(fr.round_config()), evaluate_fn=fr.evaluate)
        fr.finish()
    return fr.run.path


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The federation in the run config (`gradprom federate`, `flwr run`); its `resume` continues the run
    directory `<out>/<name>` from its last checkpointed round."""
    run_config = dict(context.run_config)
    if run_config.get("console"):  # started by `gradprom federate`: its console contract in this process
        federation_console()
    run_server(grid, context, from_run_config(run_config), resume=bool(run_config.get("resume", False)),
               parent_pid=int(run_config.get("parent-pid", 0) or 0) or None)
