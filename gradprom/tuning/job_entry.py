"""The job script of a tuning run on a cluster: `gradprom tune` that joins the cluster it runs on.

    ray submit ray_cluster.yaml gradprom/tuning/job_entry.py -- --trials 32 --max-epochs 8
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m gradprom.tuning.job_entry --trials 32

`ray submit` copies this file to ~/job_entry.py on the head and runs it with whatever `python` the SSH login
shell finds, so it uses only the standard library until it knows it runs in the project's environment: if
GradProm or its dependencies are missing, it re-runs itself with $GRADPROM_PYTHON or ~/gradprom/.venv/bin/python
(where ray_cluster.yaml installs the project). Arguments are those of `gradprom tune`; `--address auto` is
added unless an address is given.
"""

from __future__ import annotations

import os
import sys


def _has_project() -> bool:
    try:
        import ray  # noqa: F401
        import torch  # noqa: F401

        import gradprom.cli  # noqa: F401
    except ImportError:
        return False
    return True


REEXEC = "GRADPROM_JOB_ENTRY_REEXEC"  # set on the re-run, so a broken environment fails instead of looping


def _project_python() -> str | None:
    if os.environ.get(REEXEC):
        return None
    for cand in (os.environ.get("GRADPROM_PYTHON"), os.path.expanduser("~/gradprom/.venv/bin/python")):
        # a venv's python is a symlink to the base interpreter: compare the paths, not their targets
        if cand and os.access(cand, os.X_OK) and os.path.abspath(cand) != os.path.abspath(sys.executable):
            return cand
    return None


def main(argv: list[str]) -> int:
    """Run `gradprom tune` with `argv`, joining the current cluster."""
    if not _has_project():
        python = _project_python()
        if python is None:
            print("job_entry: GradProm is not installed for this Python; set GRADPROM_PYTHON to the project's "
                  "venv interpreter, or install it into ~/gradprom/.venv (ray_cluster.yaml's setup_commands).",
                  file=sys.stderr)
            return 2
        os.environ[REEXEC] = "1"
        os.execv(python, [python, os.path.abspath(__file__), *argv])
    from gradprom.cli import main as gradprom_main

    args = list(argv)
    if "--address" not in args and not any(a.startswith("--address=") for a in args):
        args += ["--address", "auto"]  # the cluster this job runs on (RAY_ADDRESS when Ray Jobs started it)
    return gradprom_main(["tune", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
