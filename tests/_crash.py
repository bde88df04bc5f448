"""Run `gradprom` and kill -9 itself at one exact point (the crash a test then recovers from).

    python -m tests._crash step N -- train ARGS...   SIGKILL just before step N's row is recorded (rows of the
                                                    earlier steps are on disk when flush_seconds is tiny)
    python -m tests._crash best N -- train ARGS...   SIGKILL in the middle of the N-th best.pt write: the temp
                                                    file holds half a checkpoint, nothing is renamed

Polling from outside for a step part or a temp file misses the moment on a loaded machine; hooking the write
itself kills at the same point every time. Only the timing is injected: what the killed process leaves on disk,
and everything the resumed run does, is the real code.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, n, sep, *argv = sys.argv[1:]
    assert sep == "--", sys.argv
    n = int(n)
    if mode == "step":
        from gradprom.platform import rundir

        append = rundir.StepWriter.append

        def append_or_die(self, row):
            if row["step"] == n:
                _die()
            append(self, row)

        rundir.StepWriter.append = append_or_die
    elif mode == "best":
        import torch

        save, seen = torch.save, []

        def save_or_die(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)) and Path(f).name.startswith(".best.pt."):
                seen.append(f)
                if len(seen) == n:
                    data = Path(f).read_bytes()
                    Path(f).write_bytes(data[: len(data) // 2])  # half written, as a crash mid-write leaves it
                    _die()

        torch.save = save_or_die
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from gradprom.cli import main as cli_main

    sys.exit(cli_main(argv))


if __name__ == "__main__":
    main()
