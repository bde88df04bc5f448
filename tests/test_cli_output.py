"""What a newcomer sees: `--version`, help with defaults, the -q/-v logging contract and the run's log.txt,
plain progress lines and the next commands when the output is not a terminal (a subprocess), `experiment --seeds`."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from importlib import metadata

import pytest

from gradprom.cli import build_parser, main, next_steps
from gradprom.experiments.cli import parse_seeds
from gradprom.experiments.grid import GridSpec
from gradprom.platform.errors import ConfigError
from gradprom.platform.logs import run_log, setup_logging

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_version_lists_the_libraries_without_importing_them():
    code = ("import sys\nfrom gradprom.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nheavy = [m for m in ('torch', 'monai', 'ray', 'flwr', 'optuna') "
            "if m in sys.modules]\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    for name in ("torch", "monai", "ray", "flwr", "optuna"):
        assert lines[name] == metadata.version(name), (name, proc.stdout)
    assert lines["gradprom"] and lines["python"]


def _help(*cmd: str) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([*cmd, "--help"])



@pytest.mark.parametrize("cmd, expected", [
    (["evaluate"], ["RUN_DIR", "a run directory", "(default: best)", "(default: test)", "(default: auto)"]),
    (["demo"], ["(default: 4)", "(default: 512)", "(default: runs)", "(default: classification)"]),
    (["data", "convert"], ["(default: auto)", "(default: 0)"]),
    (["data", "check"], ["the store directory"]),
    (["data", "show"], ["the store directory", "(default: 8)"]),
    (["experiment"], ["(default: quick)", "(default: experiments/grid)", "0,1,2", "micro"]),
])
def test_help_shows_defaults_and_describes_every_argument(capsys, cmd, expected):
    _help(*cmd)
    out = capsys.readouterr().out
    for text in expected:
        assert text in " ".join(out.split()), (text, out)
    assert "(default: None)" not in out and "(default: False)" not in out
    # every argument line has a description beside it
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[cmd[0]]
    if len(cmd) > 1:
        sub = sub._subparsers._group_actions[0].choices[cmd[1]]
    undocumented = [a.dest for a in sub._actions if not a.help]
    assert undocumented == [], undocumented


def test_top_level_help_says_train_runs_locally_or_on_ray(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train locally or on Ray Train workers (--workers)" in capsys.readouterr().out


def test_seeds_take_a_list_or_a_count():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("5,") == [5] and parse_seeds("3") == 3
    assert GridSpec(seeds=[4, 7]).seed_list() == [4, 7]
    assert GridSpec(seeds=3).seed_list() == [0, 1, 2]
    assert {c.seed for c in GridSpec(seeds=[4, 7], tasks=["classification"]).cells()} == {4, 7}
    for bad in ([1, 1], [-1], 0):
        with pytest.raises(ConfigError, match="--seeds"):
            GridSpec(seeds=bad).validate()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["experiment", "--seeds", "a,b"])


@pytest.fixture
def clean_logging():
    root = logging.getLogger()
    saved = list(root.handlers), root.level, os.environ.get("GRADPROM_VERBOSITY")
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    if saved[2] is None:
        os.environ.pop("GRADPROM_VERBOSITY", None)
    else:
        os.environ["GRADPROM_VERBOSITY"] = saved[2]


@pytest.mark.parametrize("level, own_info, lib_info, lib_warning", [
    ("normal", True, False, True), ("quiet", False, False, True), ("verbose", True, True, True)])
def test_console_verbosity_contract_and_full_run_log(clean_logging, tmp_path, level, own_info, lib_info,
                                                     lib_warning):
    stream = io.StringIO()
    setup_logging(level, stream=stream)
    with run_log(tmp_path) as path:
        logging.getLogger("gradprom.platform.epoch").info("own info line")
        logging.getLogger("gradprom.platform.epoch").debug("own debug line")
        logging.getLogger("matplotlib.font_manager").info("library info line")
        logging.getLogger("matplotlib.axes").warning("library warning line")
    logging.getLogger("gradprom.x").info("after the run")
    console = stream.getvalue()
    assert ("own info line" in console) == own_info, console
    assert ("library info line" in console) == lib_info, console
    assert ("library warning line" in console) == lib_warning, console
    assert "\x1b[" not in console  # not a terminal: no colour codes
    logged = path.read_text()
    for line in ("own info line", "own debug line", "library info line", "library warning line"):
        assert line in logged, (line, logged)  # the run log is full whatever the console shows
    assert "after the run" not in logged  # the handler ends with the run


def test_next_steps_name_the_run_and_its_parent(tmp_path):
    text = next_steps(tmp_path / "runs" / "r1")
    assert f"gradprom evaluate {tmp_path / 'runs' / 'r1'}" in text
    assert f"gradprom dashboard --runs {tmp_path / 'runs'}" in text
    assert str(tmp_path / "runs" / "r1" / "figures") in text
