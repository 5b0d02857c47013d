"""The command line through its real entry points: help, validate, bad input -> one line + exit 2."""

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from rayexp.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
BAD = {
    "name": "bad",
    "base": {"process": {"name": "mess4"}, "model": {"n_ctx": 4}},
    "tasks": [{"name": "t", "reward": "next_token"}],
}


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rayexp", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("command", ["run", "validate", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: rayexp " + command in capsys.readouterr().out


def test_python_m_validates_a_shipped_sweep():
    proc = run("validate", "sweeps/quickstart.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "ok: sweep 'quickstart', 3 trials" in proc.stdout


def test_python_m_bad_file_one_line_exit_2(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(BAD))
    proc = run("validate", str(file))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {file}: base.process: unknown process name 'mess4'")


def test_run_with_bad_file_launches_nothing(tmp_path, capsys, monkeypatch):
    import ray

    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(BAD))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "base.process" in err[0]
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "rayexp_results").exists()


def test_resume_without_a_previous_run_is_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = yaml.safe_load((ROOT / "sweeps/quickstart.yaml").read_text())
    file = tmp_path / "q.yaml"
    file.write_text(yaml.safe_dump(good))
    assert main(["run", str(file), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_report_unknown_experiment_is_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report", "no-such-experiment"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow database here" in err[0]
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_command_is_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_gpu_request_on_a_cluster_without_gpus_is_refused_before_any_trial(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = yaml.safe_load((ROOT / "sweeps/quickstart.yaml").read_text())
    sweep["resources"] = {"cpu": 1, "gpu": 0.5}
    file = tmp_path / "gpu.yaml"
    file.write_text(yaml.safe_dump(sweep))
    assert main(["validate", str(file)]) == 0  # fine on paper ...
    assert main(["run", str(file)]) == 2  # ... refused once connected to this GPU-less Ray
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: {file}: resources.gpu: 0.5 GPU per trial requested but the cluster has no GPU"]
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "rayexp_results").exists()
