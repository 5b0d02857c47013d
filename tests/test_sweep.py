"""Sweeps end to end on an embedded Ray bound to 127.0.0.1: parallel trials in MLflow, the
pretrain cache, a worker killed mid-PPO, and a driver killed mid-sweep then resumed.

Every test uses a tiny model and a few PPO steps; Ray is stopped by the code under test
(`run_sweep` shuts down what it starts) or by killing the process group the test started.
"""

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from rayexp import tracking
from rayexp.machine import machine_tags

ROOT = Path(__file__).resolve().parents[1]
MIXTURE = {"name": "mixture", "components": [{"name": "mess3", "x": 0.05, "a": 0.85}, {"name": "rrxor"}]}


def tiny_sweep(name="tiny", ppo_iterations=2, **extra):
    """Two trials (negative and positive control) that share one pretraining."""
    sweep = {
        "name": name,
        "experiment": name,
        "storage_path": "results",
        "resources": {"cpu": 1},
        "max_failures": 2,
        "base": {
            "seed": 0,
            "process": MIXTURE,
            "model": {"n_layers": 1, "d_model": 16, "n_heads": 1, "d_head": 8, "d_mlp": 16, "n_ctx": 6},
            "pretrain": {"steps": 30, "batch_size": 32, "eval_every": 10, "optimal_loss_samples": 200},
            "probe": {"n_seq": 60},
            "ppo": {
                "iterations": ppo_iterations,
                "train_batch_size": 48,
                "minibatch_size": 48,
                "num_epochs": 1,
                "num_envs_per_env_runner": 4,
            },
        },
        "tasks": [
            {"name": "negative_control", "reward": "next_token"},
            {"name": "positive_control", "reward": "joint_target", "stream": "interleave"},
        ],
    }
    sweep.update(extra)
    return sweep


def write_sweep(directory: Path, sweep: dict) -> Path:
    path = directory / f"{sweep['name']}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def trial_runs(uri: str, experiment: str):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string="tags.`rayexp.kind` = 'trial'") if exp else []


def artifacts(uri: str, run_id: str, path=None) -> list[str]:
    c, out = tracking.client(uri), []
    for a in c.list_artifacts(run_id, path):
        out += artifacts(uri, run_id, a.path) if a.is_dir else [a.path]
    return out


def cli(*args, cwd, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "rayexp", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the driver and the Ray it starts share one process group to kill
        **kw,
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_parallel_trials_land_in_mlflow_and_share_one_pretraining(workdir):
    from rayexp.report import report
    from rayexp.sweep import run_sweep

    path = write_sweep(workdir, tiny_sweep())
    outcome = run_sweep(str(path))
    assert outcome.errors == 0 and len(outcome.rows) == 2
    uri = tracking.tracking_uri()
    runs = trial_runs(uri, "tiny")
    assert len(runs) == 2
    parent = tracking.client(uri).get_run(outcome.parent_run_id)
    assert parent.data.tags["rayexp.kind"] == "sweep" and parent.info.status == "FINISHED"
    assert "git.sha" in parent.data.tags and parent.data.tags["git.dirty"] in ("true", "false")
    machine = machine_tags("cpu")  # the trials ran here, on the CPU
    for run in runs:
        task = run.data.tags["rayexp.task"]
        assert run.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert run.info.status == "FINISHED"
        assert {k: run.data.tags.get(k) for k in machine} == machine
        # the hit's pretraining was the miss's: the machine that trained it, recorded in the cache entry
        assert run.data.tags["rayexp.pretrain_cpu_bf16"] == machine["rayexp.cpu_bf16"]
        assert run.data.tags["rayexp.pretrain_cpu"] == machine["rayexp.cpu"]
        assert run.info.run_name == f"{task} s0 mixture(mess3,rrxor)"  # what tells trials apart first
        m = run.data.metrics
        for key in (
            "pretrain/loss_gap",
            "probe/pre/belief/concat_resid/skill",
            "probe/post/factor0/blocks.0.hook_resid_post/r2",
            "ppo/approx_kl",
            "ppo/reward_per_step",
            "analysis/weight_diff/rel_frobenius",
        ):
            assert key in m, key
        assert run.data.params["task.name"] == task and run.data.params["model.d_model"] == "16"
        assert len(tracking.client(uri).get_metric_history(run.info.run_id, "ppo/approx_kl")) == 2
        files = set(artifacts(uri, run.info.run_id))
        assert {"tables/probe_pre.parquet", "tables/weight_diff.parquet", "weights/model_after.pt"} <= files
        # at the artifact root: MLflow's compare view lists only root files ("No common artifacts" else)
        assert {"weight_diff_heatmap.png", "probe_skill_by_layer.png"} <= files
    # what MLflow's compare view offers: the files (not folders) at the root of every run's artifacts
    c = tracking.client(uri)
    common = set.intersection(*({a.path for a in c.list_artifacts(r.info.run_id) if not a.is_dir} for r in runs))
    assert {"weight_diff_heatmap.png", "probe_skill_by_layer.png"} <= common, common
    # the positive control also probes its interleaved RL stream
    pos = next(r for r in runs if r.data.tags["rayexp.task"] == "positive_control")
    assert "probe/rl_post/belief/concat_resid/skill" in pos.data.metrics
    # both trials ran at once, and pretrained once between them (the other waited on the lock)
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert spans[1][0] < spans[0][1]
    assert sorted(r.data.tags["rayexp.pretrain_cache"] for r in runs) == ["hit", "miss"]
    assert len(list((workdir / "results" / "pretrain_cache").glob("*/DONE"))) == 1
    buf = io.StringIO()
    assert report("tiny", out_dir=str(workdir / "rep"), file=buf) == 0  # `rayexp report tiny`
    assert "negative_control" in buf.getvalue() and "positive_control" in buf.getvalue()
    assert {"report.csv", "probe_skill_pre_post.png", "ppo_reward.png"} <= {p.name for p in (workdir / "rep").iterdir()}
    assert {r.data.tags["rayexp.pretrain_key"] for r in runs} == {
        p.name for p in (workdir / "results/pretrain_cache").glob("*") if p.is_dir()
    }


def _wait_for(predicate, timeout: float, proc=None, what=""):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_killed_mid_ppo_resumes_from_its_checkpoint(workdir):
    sweep = tiny_sweep("fault", ppo_iterations=8, tasks=[{"name": "next", "reward": "next_token"}])
    path = write_sweep(workdir, sweep)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    proc = cli("run", str(path), cwd=workdir)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # the driver creates the MLflow database; reading it before then would race its migration
        _wait_for(lambda: any(line.startswith("rayexp: sweep fault") for line in lines), 240, proc, "the sweep start")

        def mid_ppo():
            for run in trial_runs(uri, "fault"):
                hist = tracking.client(uri).get_metric_history(run.info.run_id, "ppo/approx_kl")
                if len(hist) >= 2:
                    return int(run.data.tags["rayexp.worker_pid"])
            return None

        pid = _wait_for(mid_ppo, 240, proc, "PPO to start")
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=300)
        reader.join(timeout=30)
        out = "".join(lines)
    finally:
        kill_group(proc)
    (workdir / "driver.log").write_text(out)
    assert proc.returncode == 0, out
    assert "FAILED" in out  # Tune saw the dead worker ...
    runs = trial_runs(uri, "fault")
    assert len(runs) == 1  # ... and the retry continued the same MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["rayexp.worker_pid"]) != pid
    assert run.data.tags["rayexp.resumed_after"] == "probe_pre"  # pretrain and probe were not redone
    c = tracking.client(uri)
    assert len(c.get_metric_history(run.info.run_id, "probe/pre/belief/concat_resid/skill")) == 1
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "pretrain/loss")]
    # logged once (the retry did not pretrain again): every eval_every step and every checkpoint step
    assert sorted(steps) == sorted(set(steps)) and {10, 20, 30} <= set(steps)
    # PPO resumed after a saved iteration (>= 1: two iterations were logged before the kill), and
    # every PPO metric has exactly one point per iteration
    assert int(run.data.tags["rayexp.ppo_resumed_after_iteration"]) >= 1
    for key in ("ppo/approx_kl", "ppo/reward_per_step", "ppo/env_steps"):
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, key)) == list(range(8)), key
    env_steps = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "ppo/env_steps"), key=lambda m: m.step)]
    assert env_steps == [48 * (i + 1) for i in range(8)]  # the sampled-steps count continued across the kill
    assert "analysis/weight_diff/rel_frobenius" in run.data.metrics
    assert "weights/model_after.pt" in artifacts(uri, run.info.run_id)


def test_driver_killed_then_resume_skips_finished_trials(workdir):
    sweep = tiny_sweep(
        "resume",
        ppo_iterations=3,
        tasks=[{"name": "next", "reward": "next_token"}],
        axes={"grid": {"seed": [0, 1]}},
        max_concurrent=1,
    )
    path = write_sweep(workdir, sweep)
    proc = cli("run", str(path), cwd=workdir)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if ": finished" in line:
                break
        else:
            raise AssertionError("driver ended before a trial finished:\n" + "".join(lines))
    finally:
        kill_group(proc)
    finished = {line.split()[1] for line in lines if ": finished" in line}
    assert finished

    resumed = cli("run", str(path), "--resume", cwd=workdir)
    out, _ = resumed.communicate(timeout=400)
    kill_group(resumed)
    assert resumed.returncode == 0, out
    started_again = {line.split()[1] for line in out.splitlines() if line.rstrip().endswith(": started")}
    assert not (started_again & finished), out
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = trial_runs(uri, "resume")
    assert sorted(r.data.tags["rayexp.seed"] for r in runs) == ["0", "1"]  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
