"""What the sweep driver watches while Tune runs (rayexp.monitor) and what reaches the terminal
(rayexp.console): progress lines inside long stages, the watchdog for trials that cannot be placed or
stop reporting, stderr sent to a log file, and one parent-run metric point per driver run.

The unit tests drive the Tune callbacks with a fake clock and stand-in trials; the others run a
tiny sweep on an embedded Ray bound to 127.0.0.1.
"""

import os
import subprocess
import sys
import time
from types import SimpleNamespace as NS

import numpy as np
from ray import cloudpickle
from test_sweep import tiny_sweep, trial_runs, write_sweep

from rayexp import monitor, tracking
from rayexp.cli import main
from rayexp.config import SweepError, load_points
from rayexp.console import OneLineError


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_trial(tmp_path, trial_id="t1", status="RUNNING", **sweep_extra):
    sweep = tiny_sweep("fake", ppo_iterations=40, **sweep_extra)
    sweep["base"]["pretrain"] |= {"steps": 800, "eval_every": 100}
    _, points = load_points(write_sweep(tmp_path, sweep))
    p = points[0]
    config = {"point": {"trial": p.trial.model_dump(), "axes": p.axes}}
    return NS(trial_id=trial_id, config=config, status=status, error_file=None)


def test_a_finished_trials_eta_counts_the_trials_running_beside_it(tmp_path, capsys):
    clock = Clock()
    progress = monitor.Progress(total=3, clock=clock)
    a, b, c = (fake_trial(tmp_path, trial_id=t) for t in ("a", "b", "c"))
    progress.on_trial_start(0, [a, b], a)
    progress.on_trial_start(0, [a, b], b)
    clock.now = 94
    a.status = "TERMINATED"
    progress.on_trial_complete(0, [a, b, c], a)  # b has run 94 s too: nearly done, not a third of the work left
    progress.on_trial_start(0, [a, b, c], c)
    clock.now = 100
    b.status = "TERMINATED"
    progress.on_trial_complete(0, [a, b, c], b)  # c is 6 s into a trial of ~97 s
    said = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "finished" in line]
    # 94 / 1.95 * 1.05 = 50.6 s (finished trials alone: 3m08s); 100 / 2.06 * 0.94 = 45.6 s (the same as alone)
    assert said == ["finished (1/3 trials, ETA 0m50s)", "finished (2/3 trials, ETA 0m45s)"], said


def test_progress_inside_long_stages_is_throttled_and_its_eta_restarts(tmp_path, capsys):
    clock = Clock()
    progress = monitor.Progress(total=1, every=10, clock=clock)
    trial = fake_trial(tmp_path)

    def at(t, **result):
        clock.now = t
        progress.on_trial_result(0, [trial], trial, result)

    progress.on_trial_start(0, [trial], trial)  # t = 0
    at(4, **{"pretrain/step": 100, "pretrain/loss": 1.2})  # the stage's clock starts here
    at(8, **{"pretrain/step": 200, "pretrain/loss": 1.1})  # 8 s after "started": too soon
    at(12, **{"pretrain/step": 300, "pretrain/loss": 1.05})  # 200 steps in 8 s, 500 left: 20 s
    at(16, **{"pretrain/step": 400, "pretrain/loss": 1.0})  # 4 s after the last line
    clock.now = 20
    progress.on_trial_recover(0, [trial], trial)  # a retry: the ETA clock restarts
    at(40, **{"pretrain/step": 100, "pretrain/loss": 1.2})
    at(51, **{"pretrain/step": 200, "pretrain/loss": 1.1})  # 100 steps in 11 s, 600 left: 66 s
    at(52, stage=1)  # pretrain done: a line whatever the throttle
    at(53, stage=2)
    at(70, **{"stage": 2, "ppo/iteration": 9, "ppo/reward_per_step": 0.41234})  # iteration 10 of 40, no rate yet
    at(85, **{"stage": 2, "ppo/iteration": 19, "ppo/reward_per_step": 0.5})  # 10 in 15 s, 20 left: 30 s
    lines = capsys.readouterr().out.splitlines()
    said = [line.split(": ", 1)[1] for line in lines]
    assert said == [
        "started",
        "pretrain step 300/800, loss 1.05, ETA 0m20s",
        "FAILED; retrying from its last stage checkpoint",
        "pretrain step 100/800, loss 1.2",  # first seen since the retry: no rate yet
        "pretrain step 200/800, loss 1.1, ETA 1m06s",  # from the retry's own rate, not the first attempt's
        "pretrain done (1/5)",
        "probe_pre done (2/5)",
        "ppo iteration 10/40, reward/step 0.4123",
        "ppo iteration 20/40, reward/step 0.5, ETA 0m30s",
    ], lines
    assert lines[-1].startswith("[   85.0s] t1 negative_control:")
    clock.now = 500
    progress.setup()  # a --resume: the elapsed clock restarts too
    progress.on_trial_start(0, [trial], trial)
    assert capsys.readouterr().out.startswith("[    0.0s] t1 negative_control: started")


def test_watchdog_fails_a_trial_that_stops_reporting_but_not_one_that_reports(tmp_path):
    clock = Clock()
    dog = monitor.Watchdog("s.yaml", pending_s=100, stall_s=30, runners_at="ppo.num_env_runners", clock=clock)
    stop = monitor.Stop(dog)
    a, b = fake_trial(tmp_path, "a"), fake_trial(tmp_path, "b")
    for t in range(0, 200, 5):  # a reports every 20 s; b reports once, at 10 s, finishing stage 1
        clock.now = float(t)
        if t % 20 == 0:
            dog.on_trial_result(0, [a, b], a, {"stage": 0})
        if t == 10:
            dog.on_trial_result(0, [a, b], b, {"stage": 1})
        dog.on_step_end(0, [a, b])
        if dog.failure is not None:
            break
    assert clock.now == 45 and stop.stop_all() and not stop("a", {})
    assert isinstance(dog.failure, OneLineError) and dog.failure.code == 1
    message = str(dog.failure)
    assert message.startswith("s.yaml: trial b (negative_control) reported nothing for 35 s in stage probe_pre")
    assert message.endswith("continue with: rayexp run s.yaml --resume") and "--stall-timeout 30" in message


def test_watchdog_names_what_no_node_can_place_once_nothing_runs(tmp_path, monkeypatch):
    clock = Clock()
    dog = monitor.Watchdog("s.yaml", pending_s=120, stall_s=0, runners_at="ppo.num_env_runners", clock=clock)
    monkeypatch.setattr(monitor.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(monitor.ray, "available_resources", lambda: {"CPU": 0.0})
    waiting = fake_trial(tmp_path, "w", status="PENDING")
    running = fake_trial(tmp_path, "r")
    waiting.placement_group_factory = NS(bundles=[{"CPU": 1.0, "GPU": 0.0, "node_a": 1.0}])
    for t in range(0, 1000, 10):  # queued behind a running trial: waiting is fine, however long
        clock.now = float(t)
        dog.on_trial_result(0, [waiting, running], running, {"stage": 0})
        dog.on_step_end(0, [waiting, running])
    assert dog.failure is None
    running.status = "TERMINATED"
    for t in range(1000, 1200, 10):
        clock.now = float(t)
        dog.on_step_end(0, [waiting, running])
        if dog.failure is not None:
            break
    assert clock.now == 1130 and isinstance(dog.failure, SweepError)
    assert str(dog.failure) == (
        "s.yaml: resources.custom.node_a: 1 node_a per trial requested but the cluster has no node_a; "
        "no trial could start for 130 s (--pending-timeout 120)"
    )
    # placeable on an idle cluster, but others hold the CPUs
    waiting.placement_group_factory = NS(bundles=[{"CPU": 1.0}])
    dog.setup()
    for t in (2000, 2200):
        clock.now = float(t)
        dog.on_step_end(0, [waiting, running])
    assert "a trial holds 1 CPU (free: 0); other jobs or actors hold the rest" in str(dog.failure)


def test_pickled_callbacks_become_the_current_drivers():
    """Tune pickles callbacks with the experiment and restores them on --resume: they must become the
    resumed driver's own (its timeouts, its clocks), not the first run's."""
    first = monitor.Watchdog("s.yaml", 1, 2, "x").register()
    blob = cloudpickle.dumps([first, monitor.Stop(first).register(), monitor.Progress(3).register()])
    second = monitor.Watchdog("s.yaml", 10, 20, "x").register()
    stop, progress = monitor.Stop(second).register(), monitor.Progress(4).register()
    assert cloudpickle.loads(blob) == [second, stop, progress]


def test_a_trial_waiting_on_anothers_pretraining_keeps_beating(tmp_path, monkeypatch):
    """The pretrain cache's lock wait calls `waiting()` (the trial's heartbeat to Tune), so the stall
    watchdog does not take a trial queued behind a long pretraining for a stuck one."""
    from rayexp import cache

    monkeypatch.setattr(cache, "WAIT_BEAT_S", 0.3)
    lock = tmp_path / "k.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", (f"import fcntl, time; f = open({str(lock)!r}, 'a+'); fcntl.lockf(f, fcntl.LOCK_EX); "
                                "print('locked', flush=True); time.sleep(2.5)")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    beats, t0 = [], time.monotonic()
    with cache._locked(lock, waiting=lambda: beats.append(time.monotonic() - t0)):
        held = time.monotonic() - t0
    holder.wait(timeout=10)
    assert held > 1.5 and len(beats) >= 3 and all(b < held for b in beats), (held, beats)


def test_an_unexpected_error_is_one_line_naming_the_log_that_holds_its_traceback(tmp_path, capsys, monkeypatch):
    from rayexp import cli

    monkeypatch.setenv("RAYEXP_LOG_DIR", str(tmp_path))

    def broken(path, log, **kwargs):
        log.start("broken")
        os.write(2, b"noise from a library\n")
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli, "run_sweep", broken)
    assert main(["run", "x.yaml"]) == 1
    (log,) = tmp_path.glob("broken-*.log")
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: RuntimeError: disk on fire (traceback in {log})"], err
    text = log.read_text()
    assert "noise from a library" in text and "Traceback" in text and "second line" in text


def _record_parent(uri: str, experiment: str):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string="tags.`rayexp.kind` = 'sweep'")[0]


def test_unplaceable_trials_fail_fast_in_one_line(workdir, capsys, monkeypatch):
    """A trial asks for a resource no node has and the check before launch missed it (here: switched
    off; in life, a node lost after it): not a silent wait, but exit 2, one line, the parent FAILED."""
    from rayexp import sweep as driver

    monkeypatch.setenv("RAYEXP_LOG_DIR", str(workdir / "logs"))
    monkeypatch.setattr(driver, "check_cluster", lambda *args, **kwargs: None)
    path = write_sweep(workdir, tiny_sweep("unplaceable", resources={"cpu": 1, "custom": {"node_a": 1}}))
    t0 = time.time()
    assert main(["run", str(path), "--pending-timeout", "3"]) == 2
    took = time.time() - t0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        (
            f"error: {path}: resources.custom.node_a: 1 node_a per trial requested but the cluster has no node_a; "
            "no trial could start for 3 s (--pending-timeout 3)"
        )
    ]
    parent = _record_parent(f"sqlite:///{workdir / 'mlflow.db'}", "unplaceable")
    assert parent.info.status == "FAILED" and took < 60, took


def test_a_trial_that_stops_reporting_fails_the_sweep(workdir, capsys, monkeypatch):
    """The worker hangs when its first stage starts (RAYEXP_HANG_AT): after --stall-timeout of silence
    the sweep stops, one line names the trial and the stage, exit 1, the parent run FAILED. (That results
    restart the clock is the unit test's: a hang at a later stage waits on pretraining's wall time.)"""
    monkeypatch.setenv("RAYEXP_HANG_AT", "pretrain")
    monkeypatch.setenv("RAYEXP_LOG_DIR", str(workdir / "logs"))
    sweep = tiny_sweep("stall", tasks=[{"name": "next", "reward": "next_token"}])
    path = write_sweep(workdir, sweep)
    t0 = time.time()
    assert main(["run", str(path), "--stall-timeout", "10"]) == 1
    took = time.time() - t0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: {path}: trial ") and "reported nothing for 10 s in stage pretrain" in errors[0]
    parent = _record_parent(f"sqlite:///{workdir / 'mlflow.db'}", "stall")
    assert parent.info.status == "FAILED" and took < 60, took
    assert [r.info.status for r in trial_runs(f"sqlite:///{workdir / 'mlflow.db'}", "stall")] == ["KILLED"]


def test_a_clean_run_keeps_stderr_for_errors_and_resume_adds_a_step(workdir):
    """`rayexp run`: stdout says where the logs are, then rayexp's lines (progress inside pretraining and
    PPO included); stderr stays empty, the log holds Ray's, Tune's and RLlib's messages. A --resume of the
    finished sweep logs sweep/wall_s and sweep/failed_trials at a new step (1), not a second value at 0."""
    path = write_sweep(workdir, tiny_sweep("quiet", ppo_iterations=3, tasks=[{"name": "next", "reward": "next_token"}]))
    env = {**os.environ, "RAYEXP_PROGRESS_EVERY_S": "0", "RAYEXP_LOG_DIR": str(workdir / "logs")}

    def run(*extra):
        cmd = [sys.executable, "-m", "rayexp", "run", str(path), *extra]
        return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=400, check=False)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stderr == "", first.stderr
    out = first.stdout.splitlines()
    assert out[0].startswith(f"logs: {workdir / 'logs'}/quiet-"), out[0]
    log = (workdir / "logs").glob("quiet-*.log")
    text = next(log).read_text()
    assert "Started a local Ray instance" in text and "WARNING" in text, text[-2000:]
    assert any("pretrain step 20/30, loss " in line for line in out), first.stdout
    assert any("ppo iteration 2/3, reward/step " in line and ", ETA " in line for line in out), first.stdout
    assert not any("pid=" in line or "WARNING" in line for line in out), first.stdout

    again = run("--resume")
    assert again.returncode == 0 and again.stderr == "", again.stdout + again.stderr
    c = tracking.client(f"sqlite:///{workdir / 'mlflow.db'}")
    parent = _record_parent(f"sqlite:///{workdir / 'mlflow.db'}", "quiet")
    for key in ("sweep/wall_s", "sweep/failed_trials"):
        assert sorted(m.step for m in c.get_metric_history(parent.info.run_id, key)) == [0, 1], key


def test_a_long_analysis_reports_its_progress_to_the_driver_and_its_watchdog(tmp_path, capsys):
    """An analysis that calls rayexp.analysis.progress (the LLC: ~90 s per estimate, 18 per trial) shows
    a progress line with an ETA, and each call is a result the stall watchdog counts as a beat."""
    sweep = tiny_sweep("fake", ppo_iterations=40)
    sweep["base"]["analyses"] = ["weight_diff"]
    _, points = load_points(write_sweep(tmp_path, sweep))
    trial = NS(
        trial_id="t1",
        config={"point": {"trial": points[0].trial.model_dump(), "axes": {}}},
        status="RUNNING",
        error_file=None,
    )
    names = [s.name for s in monitor.stages_for(monitor._resolved(trial))]
    i = names.index("analysis:weight_diff")
    clock = Clock()
    progress = monitor.Progress(total=1, every=10, clock=clock)
    watchdog = monitor.Watchdog("fake.yaml", 0, 100, "")

    def at(t, **result):
        clock.now = t
        progress.on_trial_result(0, [trial], trial, result)
        watchdog.clock = lambda: t
        watchdog.on_trial_result(0, [trial], trial, result)
        watchdog.on_step_end(0, [trial])

    at(0, stage=i)  # the stage before it done: the analysis is running
    at(20, **{"stage": i, "progress/analysis_done": 1, "progress/analysis_total": 18})
    at(110, **{"stage": i, "progress/analysis_done": 2, "progress/analysis_total": 18})  # 90 s apart: < 100 s stall
    at(200, **{"stage": i, "progress/analysis_done": 3, "progress/analysis_total": 18})
    said = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert said[-3:] == [
        "analysis:weight_diff step 1/18",
        "analysis:weight_diff step 2/18, ETA 24m00s",
        "analysis:weight_diff step 3/18, ETA 22m30s",
    ], said
    assert watchdog.failure is None  # 200 s in a stage with a 100 s stall timeout, beating every 90 s


def test_an_analysis_stage_routes_progress_to_tune_only_and_clears_it(monkeypatch):
    from rayexp import stages
    from rayexp.analysis import AnalysisResult, progress
    from rayexp.context import Reporter, for_tune

    seen = []

    def fn(artifacts, params):
        for k in (1, 2):
            progress(k, 2)
            seen.append(dict(reporter.latest))
        return AnalysisResult(metrics={"x": 1.0}, arrays={"r": np.arange(3.0)})

    spec = NS(fn=fn, needs=())
    monkeypatch.setattr(stages.registry, "get", lambda name, scope: spec)
    monkeypatch.setattr(stages.registry, "validate_params", lambda name, params: params)
    reporter = Reporter(None, use_tune=False)
    sent = []
    monkeypatch.setattr(reporter, "metrics", lambda m, step, **kw: sent.append(m) or reporter.latest.update(m))
    finished = []
    artifacts = NS(
        on=lambda device: artifacts,
        finish_analysis=lambda name, m: finished.append(m),
        put_analysis_arrays=lambda name, a: finished.append((name, a)),
    )
    stages.analysis_stage("fake", {}).run(NS(artifacts=artifacts, report=reporter))
    name, kept = finished.pop(0)  # the arrays stored before the file that marks the stage done
    assert name == "fake" and list(kept) == ["r"] and kept["r"].tolist() == [0.0, 1.0, 2.0]
    assert [s[stages.ANALYSIS_DONE] for s in seen] == [1, 2] and seen[0][stages.ANALYSIS_TOTAL] == 2
    assert for_tune(stages.ANALYSIS_DONE) and sent[:2] == [{}, {}]  # nothing new for MLflow, a beat for Tune
    assert stages.ANALYSIS_DONE not in reporter.latest and finished == [{"x": 1.0}]
    progress(1, 2)  # outside a trial's stage: a no-op
