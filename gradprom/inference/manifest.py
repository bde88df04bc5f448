"""The manifest of an enhance job, `<out>/_enhance.json`: the run, checkpoint and options, then every input ->
output(s) with SHA-256 checksums, and every failed input with its reason. Written atomically at the end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.rundir import now_iso, versions

MANIFEST_NAME = "_enhance.json"


def sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Manifest:
    """Collects the job's entries; `write` puts them in `<out>/_enhance.json`."""

    def __init__(self, out: Path, header: dict[str, Any]):
        self.out = out
        self.data: dict[str, Any] = {"format": "gradprom-enhance", "version": 1, **header, "start": now_iso(),
                                     "versions": versions(), "outputs": [], "failures": []}

    def output(self, names: list[str], inputs: list[Path], outputs: list[Path]) -> None:
        """Record inputs (their names, and the checksums of their files) -> output files (paths and checksums)."""
        self.data["outputs"].append({
            "input": names, "input_sha256": [sha256(p) for p in inputs],
            "output": [p.relative_to(self.out).as_posix() for p in outputs],
            "output_sha256": [sha256(p) for p in outputs]})

    def failure(self, name: str, message: str) -> None:
        """Record an input that could not be enhanced."""
        self.data["failures"].append({"input": name, "error": message})

    def write(self, **summary: Any) -> Path:
        """Write the manifest with the summary fields; returns its path."""
        self.data.update(summary, end=now_iso())
        path = self.out / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.data, indent=1) + "\n")
        return path
