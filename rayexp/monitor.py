"""What the sweep driver watches while Tune runs (rayexp.sweep): Tune callbacks, imported once Ray is.

:class:`Progress` prints one line per trial event and finished stage (with the sweep's k/N and an ETA
on each finished trial) and, inside the long stages, a progress line at most every
:data:`PROGRESS_EVERY_S` per trial: ``pretrain step 400/800, loss 0.91, ETA 0m12s`` or ``ppo iteration
12/40, reward/step 0.41, ETA 0m20s``. The worker puts ``pretrain/step`` and ``ppo/iteration`` in what it
reports to Tune (not in MLflow) for this. An ETA is the rate since the stage was first seen in this
driver run, so after a resume, a retry or a restored trial its clock restarts.

:class:`Watchdog` turns a silent wait into a one-line failure. Trials pending with none running for
``pending_s`` (what they ask for cannot be placed: a resource no alive node has, or one others hold)
stop the sweep with a :class:`~rayexp.config.SweepError` naming the resource (exit 2); a running trial
that reports nothing for ``stall_s`` (no pretraining eval, PPO iteration, finished stage or pretrain
cache wait heartbeat) stops it with a :class:`~rayexp.console.OneLineError` (exit 1). The driver
raises it once Tune has stopped, so the parent run is closed FAILED.

Tune pickles its callbacks and stopper with the experiment and restores them on ``--resume``; these
pickle as a reference to the live object of the current driver (:func:`live`), so a resumed run
watches with its own settings and clocks.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial

from rayexp.checks import check_placement
from rayexp.config import SweepError
from rayexp.console import OneLineError
from rayexp.resolved import FieldError, ResolvedTrial
from rayexp.specs import axis_label
from rayexp.stages import stages_for

#: seconds between two progress lines of one trial inside a stage (``RAYEXP_PROGRESS_EVERY_S``)
PROGRESS_EVERY_S = float(os.environ.get("RAYEXP_PROGRESS_EVERY_S", "10"))
_LIVE: dict[str, Any] = {}


def live(name: str):
    """The object the current driver registered as ``name`` (what an unpickled callback becomes)."""
    if name in _LIVE:
        return _LIVE[name]
    return tune.stopper.NoopStopper() if name == "stop" else tune.Callback()


class _Live:
    _name = ""

    def register(self):
        _LIVE[self._name] = self
        return self

    def __reduce__(self):
        return live, (self._name,)


#: the most of a trial a running one counts as done, however long it has run past the mean
RUNNING_SHARE_MAX = 0.95


def eta(elapsed_s: float, done: int, total: int, running_s=(), trial_s: float | None = None) -> str:
    """``k/N trials`` and an ETA: the sweep's wall time per trial's worth of work so far, times the work
    left. Running trials count as done in part (their time so far over ``trial_s``, the mean wall time
    of the trials finished in this driver run, at most :data:`RUNNING_SHARE_MAX`): trials that run side
    by side finish together, and counting only finished ones read the first of two as half the sweep's
    rate (the quickstart's first finish said 3m13s with 53 s to go)."""
    if done <= 0 or done >= total:
        return f"{done}/{total} trials"
    worked = done + (sum(min(s / trial_s, RUNNING_SHARE_MAX) for s in running_s) if trial_s else 0.0)
    return f"{done}/{total} trials, ETA {_mmss(elapsed_s / worked * (total - worked))}"


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def trial_label(trial) -> str:
    point = trial.config["point"]
    axes = " ".join(f"{k}={axis_label(v)}" for k, v in point["axes"].items())
    return f"{point['trial']['config']['task']['name']} {axes}".rstrip()


def _resolved(trial) -> ResolvedTrial:
    return ResolvedTrial.model_validate(trial.config["point"]["trial"])


def _error_line(trial) -> str:
    """The last line of a failed trial's traceback (``ValueError: ...``), from Tune's error file."""
    try:
        with open(trial.error_file) as f:
            lines = [line.rstrip() for line in f if line.strip() and not line.startswith((" ", "\t"))]
    except Exception:  # noqa: BLE001  (a progress line must never break Tune's loop)
        return ""
    return lines[-1][:300] if lines else ""


class Progress(_Live, tune.Callback):
    _name = "progress"

    def __init__(self, total: int, log_path: Any = None, every: float | None = None, clock=time.time):
        self.total, self.log_path, self.clock = total, log_path, clock
        self.every = PROGRESS_EVERY_S if every is None else every
        self.setup()

    def setup(self, **info) -> None:
        """A new driver run (also ``--resume``): every clock starts again."""
        self.t0, self.done = self.clock(), 0
        self.stage: dict[str, int] = {}
        self.names: dict[str, list[str]] = {}
        self.resolved: dict[str, ResolvedTrial] = {}
        self.last_line: dict[str, float] = {}
        self.first_seen: dict[tuple[str, str], tuple[float, int]] = {}  # (trial, stage) -> (time, k)
        self.started: dict[str, float] = {}  # trial -> when it (last) started running in this driver run
        self.durations: list[float] = []  # wall time of each trial that started and finished in it

    def _info(self, trial) -> tuple[ResolvedTrial, list[str]]:
        if trial.trial_id not in self.names:
            self.resolved[trial.trial_id] = _resolved(trial)
            self.names[trial.trial_id] = [s.name for s in stages_for(self.resolved[trial.trial_id])]
        return self.resolved[trial.trial_id], self.names[trial.trial_id]

    def _say(self, trial, what: str) -> None:
        now = self.clock()
        self.last_line[trial.trial_id] = now
        print(f"[{now - self.t0:7.1f}s] {trial.trial_id} {trial_label(trial)}: {what}", flush=True)

    def _restart(self, trial) -> None:
        self.first_seen = {k: v for k, v in self.first_seen.items() if k[0] != trial.trial_id}

    def on_trial_start(self, iteration, trials, trial, **info):
        self._restart(trial)
        self.started[trial.trial_id] = self.clock()
        self._say(trial, "started")

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._restart(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        stage = int(result.get("stage", 0))
        if stage and stage != self.stage.get(trial.trial_id):
            self.stage[trial.trial_id] = stage
            names = self._info(trial)[1]
            self._say(trial, f"{names[stage - 1]} done ({stage}/{len(names)})")
            return
        self._inside_stage(trial, result, stage)

    def _inside_stage(self, trial, result: dict, stage: int) -> None:
        resolved, names = self._info(trial)
        current = names[stage] if stage < len(names) else ""
        if current == "pretrain" and "pretrain/step" in result:
            k, n, what = int(result["pretrain/step"]), resolved.pretrain.steps, "step"
            value = ("loss", result.get("pretrain/loss"))
        elif current in ("ppo", "start_from") and "ppo/iteration" in result:
            k, what = int(result["ppo/iteration"]) + 1, "iteration"
            n = resolved.ppo.iterations if current == "ppo" else resolved.start.ppo.iterations
            value = ("reward/step", result.get("ppo/reward_per_step") if current == "ppo" else None)
        elif current.startswith("analysis:") and "progress/analysis_done" in result:
            k, n, what = int(result["progress/analysis_done"]), int(result["progress/analysis_total"]), "step"
            value = ("", None)
        else:
            return
        now = self.clock()
        t_first, k_first = self.first_seen.setdefault((trial.trial_id, current), (now, k))
        if now - self.last_line.get(trial.trial_id, -math.inf) < self.every:
            return
        line = f"{current} {what} {k}/{n}"
        if value[1] is not None and math.isfinite(value[1]):
            line += f", {value[0]} {value[1]:.4g}"
        if k > k_first and k < n:
            line += f", ETA {_mmss((n - k) * (now - t_first) / (k - k_first))}"
        self._say(trial, line)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._restart(trial)
        why = _error_line(trial)
        self._say(trial, f"FAILED{': ' + why if why else ''}; retrying from its last stage checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        why = _error_line(trial)
        log = f" (details: {self.log_path})" if self.log_path else ""
        self._say(trial, f"FAILED{': ' + why if why else ''}; no retries left{log}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        # a resumed sweep counts the trials it restored already finished
        self.done = max(self.done + 1, sum(t.status == "TERMINATED" for t in trials))
        now = self.clock()
        if trial.trial_id in self.started:
            self.durations.append(now - self.started.pop(trial.trial_id))
        running = [
            now - self.started[t.trial_id] for t in trials if t.status == Trial.RUNNING and t.trial_id in self.started
        ]
        trial_s = sum(self.durations) / len(self.durations) if self.durations else None
        self._say(trial, f"finished ({eta(now - self.t0, self.done, self.total, running, trial_s)})")


class Watchdog(_Live, tune.Callback):
    """Trials that cannot be placed, or stop reporting: see the module docstring. ``0`` turns a check off."""

    _name = "watchdog"

    def __init__(self, file: str, pending_s: float, stall_s: float, runners_at: str, clock=time.monotonic):
        self.file, self.pending_s, self.stall_s, self.runners_at = file, pending_s, stall_s, runners_at
        self.clock = clock
        self.setup()

    def setup(self, **info) -> None:
        self.failure: Exception | None = None
        self.idle_since: float | None = None
        self.beat: dict[str, float] = {}
        self.stage: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.beat[trial.trial_id] = self.clock()
        self.stage[trial.trial_id] = int(result.get("stage", 0))

    def on_step_end(self, iteration, trials, **info):
        if self.failure is not None:
            return
        now = self.clock()
        running = {t.trial_id: t for t in trials if t.status == Trial.RUNNING}
        self.beat = {tid: self.beat.get(tid, now) for tid in running}  # a trial's clock starts when it runs
        for tid, trial in running.items():
            if self.stall_s and now - self.beat[tid] > self.stall_s:
                self.failure = self._stalled(trial, trials, now - self.beat[tid])
                return
        pending = [t for t in trials if t.status == Trial.PENDING]
        if not pending or running:
            self.idle_since = None
            return
        self.idle_since = now if self.idle_since is None else self.idle_since
        if self.pending_s and now - self.idle_since > self.pending_s:
            self.failure = self._unplaceable(pending[0], now - self.idle_since)

    def _stalled(self, trial, trials, silent: float) -> OneLineError:
        names = [s.name for s in stages_for(_resolved(trial))]
        stage = self.stage.get(trial.trial_id, 0)
        where = f"in stage {names[stage]}" if stage < len(names) else "after its last stage"
        done = sum(t.status == Trial.TERMINATED for t in trials)
        return OneLineError(
            f"{self.file}: trial {trial.trial_id} ({trial_label(trial)}) reported nothing for {silent:.0f} s "
            f"{where} (--stall-timeout {self.stall_s:g}); the sweep stopped with {done}/{len(trials)} trials "
            f"finished and its MLflow parent run is marked FAILED; continue with: rayexp run {self.file} --resume",
            1,
        )

    def _unplaceable(self, trial, waited: float) -> SweepError:
        bundles = [dict(b) for b in trial.placement_group_factory.bundles]
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        after = f"no trial could start for {waited:.0f} s (--pending-timeout {self.pending_s:g})"
        try:
            check_placement(bundles, nodes, self.runners_at)
        except FieldError as err:
            return SweepError(self.file, err.path, f"{err.message}; {after}")
        need: dict[str, float] = {}
        for bundle in bundles:
            for key, amount in bundle.items():
                need[key] = need.get(key, 0.0) + amount
        free = ray.available_resources()
        wanted = ", ".join(f"{v:g} {k} (free: {free.get(k, 0.0):g})" for k, v in need.items() if v > 0)
        return SweepError(
            self.file, "resources", f"{after}: a trial holds {wanted}; other jobs or actors hold the rest"
        )


class Stop(_Live, tune.stopper.Stopper):
    """Stops the whole sweep once the watchdog has a failure (the driver raises it after Tune stops)."""

    _name = "stop"

    def __init__(self, watchdog: Watchdog):
        self.watchdog = watchdog

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.watchdog.failure is not None


class NoTuneRestoreHint(logging.Filter):
    """Tune ends an interrupted run with "Resume ... with: Tuner.restore(...)"; rayexp resumes with
    ``rayexp run SWEEP --resume``, which the summary prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()
