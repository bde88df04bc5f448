"""Bad input to `gradprom tune`: a clear one-paragraph error and exit code 2, before any Ray process starts."""

from __future__ import annotations

import subprocess

import pytest

from gradprom.cli import main

from ._tiny import BIN, env, write_config


@pytest.mark.parametrize("args, expected", [
    (["--tau=-2,0.5"], "`tune.tau`: range [-2, 0.5] is outside its bounds; allowed is within [-1, 1]"),
    (["--tau", "0.6,0.2"], "low > high"),
    (["--lambda-r", "0,1"], "`tune.lambda_r`: range [0, 1] is outside its bounds; values must be > 0"),
    (["--objective", "sharpness"], "unknown metric 'sharpness'"),
    (["--objective", "dice"], "unknown metric 'dice' for task classification"),
    (["--set", "tune.metrics=[psnr,bogus]"], "unknown metric 'bogus'"),
    (["--set", "tune.tua=[0,1]"], "unknown field `tune.tua`"),
    (["--strategies", "gradprom,nonsense"], "nonsense"),
    (["--trials", "0"], "tune.num_trials"),
    (["--trials", "many"], "command line: --trials): `tune.num_trials`: got 'many'"),
    (["--resume", "does/not/exist"], "--resume 'does/not/exist': no such directory"),
])
def test_bad_input_is_a_clear_error(args, expected, tmp_path, capsys):
    cfg = write_config(tmp_path / "tune.yaml")
    full = args if args[0] == "--resume" else ["--config", str(cfg), "--out", str(tmp_path), *args]
    assert main(["tune", *full]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradprom: error: ") and expected in err, err
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("tune-*"))


def test_resume_of_a_directory_that_is_not_an_experiment(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"kind": "local"}')
    assert main(["tune", "--resume", str(tmp_path)]) == 2
    assert "not a tuning experiment" in capsys.readouterr().err


def test_real_command_exits_2_without_traceback(tmp_path):
    out = subprocess.run([str(BIN / "gradprom"), "tune", "--tau", "0,1.5", "--out", str(tmp_path)],
                         env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "outside its bounds" in out.stderr and "Traceback" not in out.stderr
