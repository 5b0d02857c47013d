"""The command line through its real entry points: help, validate, bad input -> one line + exit 2."""

import os
import pathlib
import signal
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


def test_a_sweep_interrupted_with_ctrl_c_says_what_finished_and_how_to_resume(workdir):
    """SIGINT mid-sweep: Tune saves and stops; no trial is called finished, no verdict runs, the
    parent and trial runs are KILLED (not RUNNING), the one resume command is printed, exit code 130."""
    from test_sweep import cli, kill_group, tiny_sweep, write_sweep

    from rayexp import tracking

    sweep = tiny_sweep("sigint", ppo_iterations=500, sweep_analyses=[{"name": "seed_spread"}])
    path = write_sweep(workdir, sweep)
    proc = cli("run", str(path), cwd=workdir)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if " done (" in line:  # a trial is past a stage: mid-sweep
                os.kill(proc.pid, signal.SIGINT)  # the driver, as Ctrl-C reaches it
                break
        out = "".join(lines) + proc.communicate(timeout=180)[0]
    finally:
        kill_group(proc)
    assert proc.returncode == 130, out
    assert "Interrupted: 0/2 trials finished; not finished: " in out and "negative_control seed=0" in out, out
    assert out.rstrip().endswith(f"Continue with: rayexp run {path} --resume"), out
    assert "Tuner.restore" not in out and "seed_spread" not in out.split("Interrupted:")[1], out
    c = tracking.client(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.get_experiment_by_name("sigint")
    runs = sorted((r.data.tags["rayexp.kind"], r.info.status) for r in c.search_runs([exp.experiment_id]))
    # a stopped worker may close its own run FAILED first; either way none is left RUNNING
    assert runs[0] == ("sweep", "KILLED") and len(runs) > 1 and ("trial", "RUNNING") not in runs, runs


def test_a_failure_after_the_parent_run_started_closes_it_as_failed(workdir, monkeypatch):
    """Not left RUNNING: here the sweep state cannot be written once the parent run exists."""
    import ray

    from rayexp import sweep as driver
    from rayexp import tracking

    monkeypatch.setattr(driver, "connect", lambda *args, **kwargs: None)  # no Ray needed to get this far
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(ray, "shutdown", lambda: None)

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(driver, "_write_state", disk_full)
    file = workdir / "q.yaml"
    file.write_text((ROOT / "sweeps/quickstart.yaml").read_text())
    with pytest.raises(OSError, match="No space left"):
        driver.run_sweep(str(file))
    c = tracking.client(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.get_experiment_by_name("quickstart")
    assert [r.info.status for r in c.search_runs([exp.experiment_id])] == ["FAILED"]


def test_version_and_list(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("rayexp ")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("mess3(x: float = 0.15, a: float = 0.6)", "interleave(factors)", "joint_target(factors=(0, 1), m=None):",
                 "verdict [sweep]", "geometry [trial]", "composition:", "  active_gated\n",
                 "params: lambdas=[0.0, 0.5, 1.0, 2.0], iterations=5"):  # fmt: skip
        assert name in out, name
    assert max(map(len, out.splitlines())) <= 120


def test_progress_eta():
    from rayexp.monitor import eta

    assert eta(0.0, 0, 10) == "0/10 trials"
    assert eta(100.0, 2, 10) == "2/10 trials, ETA 6m40s"  # 50 s a trial, 8 left
    assert eta(500.0, 10, 10) == "10/10 trials"
    # the quickstart's first finish (96.7 s; trials 94.4 s): the other of the two is 94.2 s in, 53 s were left
    assert eta(96.7, 1, 3) == "1/3 trials, ETA 3m13s"  # counting finished trials only
    assert eta(96.7, 1, 3, [94.2], 94.4) == "1/3 trials, ETA 0m52s"  # 1.95 trials' work done, 1.05 left
    assert eta(100.0, 2, 10, [25.0, 100.0], 50.0) == "2/10 trials, ETA 3m09s"  # 3.45 done: 29 s per trial


def test_interrupted_summary_counts_each_trial_once():
    """Tune's grid holds trials it created but never ran (PENDING at Ctrl-C, no config): once each, as
    not started (a 30-trial sweep once read "2/56 trials finished")."""
    from types import SimpleNamespace as NS

    from rayexp.sweep import summary_rows

    def point(task, seed):
        return NS(trial=NS(config=NS(task=NS(name=task)), seed=seed), axes={"seed": seed})

    points = [point(t, s) for s in (0, 1, 2) for t in ("neg", "pos")]
    ran = [
        NS(config={"point": {"trial": {"config": {"task": {"name": t}, "seed": 0}}, "axes": {"seed": 0}}},
           metrics={"done": t == "neg"}, error=None, path=f"/x/trial_{t}")
        for t in ("neg", "pos")
    ]  # fmt: skip
    pending = [NS(config={}, metrics={}, error=None, path=None) for _ in range(4)]
    rows = summary_rows(points, ran + pending)
    assert len(rows) == 6
    assert [r["status"] for r in rows] == ["OK", "UNFINISHED"] + ["NOT STARTED"] * 4
    assert {(r["task"], r["seed"]) for r in rows} == {(t, s) for s in (0, 1, 2) for t in ("neg", "pos")}


def test_pooling_sweeps_accepts_new_seeds_and_refuses_anything_else():
    """`rayexp analyze A --pool B`: B must be A on other seeds, or the pooled verdict means nothing."""
    from types import SimpleNamespace

    from rayexp.analyze import check_poolable
    from rayexp.config import SweepError

    def trial(seed, lr=1e-3, task="positive_control"):
        cfg = {"process": {"name": "z1r"}, "task": {"name": task}, "ppo": {"lr": lr}, "seed": seed}
        return SimpleNamespace(config=cfg)

    check_poolable([trial(s) for s in range(5)] + [trial(s) for s in range(5, 10)])
    with pytest.raises(SweepError, match="different settings"):
        check_poolable([trial(0), trial(5, lr=2e-3)])
    with pytest.raises(SweepError, match="both pooled sweeps ran this seed"):
        check_poolable([trial(0), trial(1), trial(1)])
    check_poolable([trial(0), trial(0, task="negative_control", lr=5e-4)])  # tasks may differ from each other


def test_an_analysis_reads_only_the_trials_its_sweep_run_logged(monkeypatch):
    """A sweep run again into the same storage keeps the earlier run's trials under the same sweep name:
    `rayexp analyze` of the latest run read both (composition_cpu rerun in its old storage: two trials per
    seed, which the verdict now refuses). It reads the trials whose keys the run's trial runs logged."""
    from types import SimpleNamespace

    from rayexp import analyze

    stored = [SimpleNamespace(key=k) for k in ("old0", "old1", "new0", "new1")]
    assert [t.key for t in analyze.of_run(stored, {"new0", "new1"})] == ["new0", "new1"]
    assert analyze.of_run(stored, set()) == stored  # runs logged before the tag: every stored trial
    tags = {"rayexp.storage": "/store", analyze.tracking.SWEEP_TAG: "sweep"}
    parent = SimpleNamespace(info=SimpleNamespace(run_id="p"), data=SimpleNamespace(tags=tags))
    children = [SimpleNamespace(data=SimpleNamespace(tags={"rayexp.trial_key": k})) for k in ("new0", "new1")]
    monkeypatch.setattr(analyze, "parent_run", lambda uri, experiment, run_id=None: parent)
    monkeypatch.setattr(analyze.tracking, "trial_runs_of", lambda uri, run_id: children if run_id == "p" else [])
    monkeypatch.setattr(analyze, "find_trials", lambda storage, sweep: stored)
    run, trials = analyze.sweep_trials("sqlite:///x.db", "exp")
    assert run is parent and [t.key for t in trials] == ["new0", "new1"]


def test_analyze_refuses_an_unknown_analysis_before_reading_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "nothing_here", "--analysis", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown sweep-level analysis 'nope'" in err[0], err
    assert not (tmp_path / "mlflow.db").exists()


def test_report_parent_can_be_given_once_several_times_or_not_at_all():
    from rayexp.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["report", "dev"]).parent is None
    assert parse(["report", "dev", "--parent", "a"]).parent == ["a"]
    assert parse(["report", "dev", "--parent", "a", "--parent", "b"]).parent == ["a", "b"]


def test_another_rayexp_in_the_working_directory_is_named_before_ray_starts(tmp_path):
    """Ray puts the driver's working directory on its workers' import path: a run started inside an
    older checkout would run that code in its workers. connect() warns with both paths."""
    from pathlib import Path

    import rayexp
    from rayexp.ray_local import shadowing_checkout

    other = tmp_path / "rayexp"
    other.mkdir()
    (other / "__init__.py").write_text("")
    assert shadowing_checkout(str(tmp_path)) == str(other.resolve())
    assert shadowing_checkout(str(Path(rayexp.__file__).resolve().parents[1])) is None  # the running one
    (tmp_path / "elsewhere").mkdir()
    assert shadowing_checkout(str(tmp_path / "elsewhere")) is None
