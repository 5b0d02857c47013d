"""The sweep driver: validated sweep file -> Ray Tune run of `rayexp.trial.run_trial` -> summary.

Ray: with ``--address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets) the driver joins that
cluster; otherwise it starts an embedded Ray bound to 127.0.0.1. Cluster-dependent checks (a
GPU request on a cluster without GPUs, custom resources that no node has) run right after
connecting and before any trial is scheduled; while Tune runs, a watchdog (rayexp.monitor) fails the
sweep in one line when trials stay unplaceable (``--pending-timeout``, exit 2) or a running trial stops
reporting (``--stall-timeout``, exit 1), closing the parent run FAILED.

Interrupting: Ctrl-C (SIGINT) lets Tune save the experiment and stop; the summary then lists which
trials finished and which did not, the parent run is closed as KILLED, no across-trial analysis
runs on the unfinished trials, and ``rayexp run SWEEP --resume`` continues (exit code 130). Any
other failure after the parent run started closes it as FAILED, never leaving it RUNNING.

Resuming: the Tune experiment lives at ``{storage_path}/{sweep name}``; ``resume=True`` restores
it with `tune.Tuner.restore`, so finished trials are kept and unfinished ones continue from their
last stage checkpoint. The sweep's MLflow parent run id is stored beside it
(``rayexp_sweep.json``) so resumed trials find their runs again, with the number of driver runs:
``sweep/wall_s`` and ``sweep/failed_trials`` are logged at step k by the k-th resume (0: the first run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayexp import tracking
from rayexp.analyze import run_analysis
from rayexp.checks import trial_bundles
from rayexp.config import (
    Point,
    SweepError,
    check_cluster,
    env_runners,
    flatten,
    load_points,
)
from rayexp.console import StderrLog
from rayexp.ray_local import connect
from rayexp.registry import STUDIES, SUMMARY_COLUMNS
from rayexp.settings import SweepConfig
from rayexp.specs import axis_label
from rayexp.study import ReportInput
from rayexp.tables import format_table
from rayexp.trial import run_trial

MLFLOW_UI = "mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
RESUME = "rayexp run {file} --resume"
#: the watchdog's defaults (rayexp.monitor.Watchdog; `rayexp run --pending-timeout/--stall-timeout`):
#: trials pending with none running this long cannot be placed; a running trial silent this long is
#: stuck (the longest quiet stretch of a healthy trial is one analysis stage or one PPO iteration)
PENDING_TIMEOUT_S = 120.0
STALL_TIMEOUT_S = 1800.0


@dataclass
class SweepOutcome:
    rows: list[dict[str, Any]]
    errors: int
    parent_run_id: str
    tracking_uri: str
    wall_s: float = float("nan")  # Tune's fit, without Ray start-up
    interrupted: bool = False  # Ctrl-C: some trials neither finished nor failed
    sweep_file: str = "SWEEP"


def storage_uri(storage_path: str) -> str:
    """Tune needs an absolute path or a URI; relative paths are taken from the working directory."""
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def _state_file(storage: str, name: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in storage:
        fs, root = pafs.FileSystem.from_uri(storage)
    else:
        fs, root = pafs.LocalFileSystem(), storage
    return fs, f"{root.rstrip('/')}/{name}/rayexp_sweep.json"


def _read_state(storage: str, name: str) -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    fs, path = _state_file(storage, name)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def _write_state(storage: str, name: str, state: dict[str, Any]) -> None:
    fs, path = _state_file(storage, name)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(state).encode())


def _resources(sweep: SweepConfig, points: list[Point]):
    from ray import tune  # Ray is imported only once the sweep file is valid

    # RLlib env runners are extra actors; reserving them with the trial avoids a deadlock when
    # every CPU is held by a trial waiting for its own runners. check_cluster checks these bundles.
    return tune.PlacementGroupFactory(trial_bundles(sweep.resources, env_runners(sweep, points)[0]))


def trial_dirname(trial) -> str:
    """Short trial directory names: Tune's default spells out the config and can pass 255 chars."""
    return f"trial_{trial.trial_id}"


def param_space(points: list[Point], meta: dict[str, Any]) -> dict[str, Any]:
    """One Tune trial per resolved trial (the driver drew sampled axes already: docs/design.md §2)."""
    from ray import tune  # see _resources

    return {
        "point": tune.grid_search([{"trial": p.trial.model_dump(), "axes": p.axes} for p in points]),
        "meta": meta,
    }


def _row(result) -> dict[str, Any]:
    point = (result.config or {}).get("point") or {"trial": {"config": {}}, "axes": {}}
    metrics = result.metrics or {}
    config = point["trial"]["config"]
    task = (config.get("task") or {}).get("name", "?")
    axes = point["axes"]
    # the directory (trial_dirname) names a trial that never reported a result, too
    name = Path(result.path).name if result.path else ""
    trial_id = name.removeprefix("trial_") if name.startswith("trial_") else metrics.get("trial_id", "?")
    row: dict[str, Any] = {
        "trial": trial_id,
        "task": task,
        "seed": config.get("seed"),
        **{k: axis_label(v) for k, v in axes.items() if k != "seed"},
        # Tune marks a trial's last result done when it returned; an interrupted one's is not
        "status": "ERROR" if result.error else "OK" if metrics.get("done") else "UNFINISHED",
    }
    for key, label in SUMMARY_COLUMNS:
        row[label] = metrics.get(key.format(task=task))
    return row


def _point_key(task: str, axes: dict[str, Any]) -> str:
    return json.dumps([task, axes], sort_keys=True, default=str)


def _not_started(points: list[Point], grid) -> list[dict[str, Any]]:
    """Rows of the trials Tune never created: an interrupted sweep with max_concurrent set has
    generated only the trials it started."""
    created = Counter(
        _point_key(r.config["point"]["trial"]["config"]["task"]["name"], r.config["point"]["axes"])
        for r in grid
        if r.config
    )
    rows = []
    for p in points:
        key = _point_key(p.trial.config.task.name, p.axes)
        if created[key]:
            created[key] -= 1
            continue
        axes = {k: axis_label(v) for k, v in p.axes.items() if k != "seed"}
        rows.append(
            {"trial": "-", "task": p.trial.config.task.name, "seed": p.trial.seed, **axes, "status": "NOT STARTED"}
        )
    return rows


def summary_rows(points: list[Point], grid) -> list[dict[str, Any]]:
    """One row per trial of the sweep: those Tune ran (from their results), then those it never started.
    Tune's grid also holds trials it created but never ran (PENDING when Ctrl-C came), with no config:
    they are counted once, as not started."""
    return [_row(r) for r in grid if r.config] + _not_started(points, grid)


def run_sweep(
    path: str,
    resume: bool = False,
    address: str | None = None,
    verbose: int = 0,
    progress: bool = True,
    num_cpus: int | None = None,
    log: StderrLog | None = None,
    pending_timeout: float = PENDING_TIMEOUT_S,
    stall_timeout: float = STALL_TIMEOUT_S,
) -> SweepOutcome:
    """Validate, connect, check the cluster, run (or resume) the sweep; raises SweepError on bad input
    (also when trials wait ``pending_timeout`` s with none running) and OneLineError when a running trial
    reports nothing for ``stall_timeout`` s (rayexp.monitor). With ``log``, stderr goes to a log file from
    here on (rayexp.console; the caller stops it)."""
    sweep, points = load_points(path)
    storage = storage_uri(sweep.storage_path)
    state = _read_state(storage, sweep.name) if resume else None
    if resume and state is None:
        raise SweepError(path, "", f"nothing to resume: no sweep state at {storage}/{sweep.name}")
    if log is not None:
        print(f"logs: {log.start(sweep.name)}", flush=True)

    import ray  # see _resources
    from ray import tune

    from rayexp import monitor  # Tune callbacks: Ray

    connect(address, num_cpus)
    parent, closed = None, False
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        check_cluster(sweep, path, nodes, points)

        uri = tracking.tracking_uri()
        exp_id = tracking.experiment_id(uri, sweep.experiment_name)
        tags = tracking.git_tags(Path(__file__).resolve().parent) or tracking.git_tags(Path(path).resolve().parent)
        if state is None:
            parent = tracking.start_parent_run(
                uri,
                exp_id,
                sweep.name,
                flatten(sweep.model_dump()),
                {
                    **tags,
                    "rayexp.sweep_file": str(path),
                    "rayexp.storage": storage,  # where `rayexp analyze` finds the trials' artifacts
                    "mlflow.note.content": sweep.description,
                },
            )
            state = {"parent_run_id": parent, "experiment_id": exp_id, "tracking_uri": uri, "runs": 1}
            _write_state(storage, sweep.name, state)
        else:
            parent = state["parent_run_id"]
            exp_id = state.get("experiment_id", exp_id)
            tracking.client(uri).update_run(parent, status="RUNNING")
            state["runs"] = state.get("runs", 1) + 1  # this driver run's number, counted before Tune starts
            _write_state(storage, sweep.name, state)
        run_index = state["runs"] - 1  # 0: the first `rayexp run`, k: its k-th --resume
        meta = {
            "parent_run_id": parent,
            "experiment_id": exp_id,
            "tracking_uri": uri,
            "storage_path": storage,
            "sweep": sweep.name,
            "tags": tags,
            "use_tune": True,
            "cpus": sweep.resources.cpu,
        }
        print(
            f"rayexp: sweep {sweep.name}: {len(points)} trials, MLflow experiment "
            f"{sweep.experiment_name!r} ({uri}), results in {storage}/{sweep.name}",
            flush=True,
        )

        trainable = tune.with_resources(run_trial, _resources(sweep, points))
        if progress and not verbose:
            # Tune's own reporter prints its experiment banner and tables even at verbose 0; its
            # legacy reporter at verbose 0 prints nothing, leaving rayexp's one line per stage
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
            # num_to_keep forces an experiment snapshot per checkpoint, and Tune warns about it every few
            # seconds (52 times in a quickstart); 0 silences only that warning
            os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        watchdog = monitor.Watchdog(str(path), pending_timeout, stall_timeout, env_runners(sweep, points)[1])
        callbacks = [monitor.Progress(len(points), log.path if log else None).register()] if progress else []
        callbacks.append(watchdog.register())
        stop = monitor.Stop(watchdog).register()  # a restored experiment's pickles resolve to these (monitor.live)
        exp_path = f"{storage.rstrip('/')}/{sweep.name}"
        space = param_space(points, meta)
        if resume and tune.Tuner.can_restore(exp_path):
            tuner = tune.Tuner.restore(
                exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True, param_space=space
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=sweep.max_concurrent,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=verbose,
                    callbacks=callbacks,
                    stop=stop,
                ),
            )
        t0 = time.time()
        hint = monitor.NoTuneRestoreHint()
        logging.getLogger("ray.tune.tune").addFilter(hint)
        try:
            grid = tuner.fit()
        finally:
            logging.getLogger("ray.tune.tune").removeFilter(hint)
        if watchdog.failure is not None:
            raise watchdog.failure  # the parent run is closed FAILED below
        rows = summary_rows(points, grid)
        errors = sum(1 for r in grid if r.error)
        outcome = SweepOutcome(rows=rows, errors=errors, parent_run_id=parent, tracking_uri=uri, sweep_file=str(path))
        if any(r["status"] in ("UNFINISHED", "NOT STARTED") for r in rows):  # Tune stops early only if interrupted
            _close(uri, exp_id, parent, "KILLED")
            closed = True
            outcome.interrupted, outcome.wall_s = True, time.time() - t0
            return outcome
        # one point per driver run, at its number: a --resume adds a step, never a second value at one
        c = tracking.client(uri)
        c.log_metric(parent, "sweep/wall_s", time.time() - t0, step=run_index)  # includes scheduling
        c.log_metric(parent, "sweep/failed_trials", errors, step=run_index)
        outcome.errors += _sweep_analyses(sweep, parent)
        tracking.finish_run(uri, parent, "FAILED" if outcome.errors else "FINISHED")
        closed = True
        outcome.wall_s = time.time() - t0
        return outcome
    except BaseException as err:
        if parent is not None and not closed:
            with contextlib.suppress(Exception):  # the error that got here is the one to report
                _close(uri, exp_id, parent, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        ray.shutdown()


def _close(uri: str, exp_id: str, parent: str, status: str) -> None:
    """Close the parent run and the trial runs that Tune stopped mid-way (their workers are gone, so
    nothing else will); a resumed trial sets its run RUNNING again."""
    c = tracking.client(uri)
    running = f"tags.`{tracking.PARENT_TAG}` = '{parent}' and attributes.status = 'RUNNING'"
    for run in c.search_runs([exp_id], filter_string=running):
        tracking.finish_run(uri, run.info.run_id, "KILLED")
    tracking.finish_run(uri, parent, status)


def _sweep_analyses(sweep: SweepConfig, parent: str) -> int:
    """The sweep file's across-trial analyses, on the Ray that ran the trials; returns failures."""
    failed = 0
    for spec in sweep.sweep_analyses:
        try:
            run_analysis(sweep.experiment_name, spec.name, spec.params, spec.group_by, parent=parent, file=sys.stdout)
        except Exception as err:  # noqa: BLE001  (a failed analysis must not hide the trials' results)
            print(f"rayexp: sweep analysis {spec.name!r} failed: {err}", file=sys.stderr, flush=True)
            failed += 1
    return failed


def print_summary(outcome: SweepOutcome, file=sys.stdout) -> None:
    print("\n" + format_table(outcome.rows), file=file)
    done = [r for r in outcome.rows if r["status"] == "OK"]
    if outcome.interrupted:
        rest = [r for r in outcome.rows if r["status"] != "OK"]
        label = ", ".join
        print(
            f"\nInterrupted: {len(done)}/{len(outcome.rows)} trials finished"
            f"{': ' + label(_label(r) for r in done) if done else ''}; not finished: "
            f"{label(_label(r) for r in rest)}. No across-trial analysis ran; MLflow parent run "
            f"{outcome.parent_run_id} is marked KILLED.",
            file=file,
        )
        print(f"Continue with: {RESUME.format(file=outcome.sweep_file)}", file=file)
        return
    print(f"\n{len(done)}/{len(outcome.rows)} trials finished; MLflow parent run {outcome.parent_run_id}.", file=file)
    inp = ReportInput(outcome.tracking_uri, outcome.parent_run_id, [], file=file)
    for study in STUDIES.values():
        if study.after_sweep is not None:
            study.after_sweep(inp)
    uri = outcome.tracking_uri
    if uri.startswith("sqlite:///") and (db := Path(uri[len("sqlite:///") :])).parent == Path.cwd():
        uri = f"sqlite:///{db.name}"  # relative: the command as typed in this directory
    print(f"Open the MLflow UI: {MLFLOW_UI.format(uri=uri)}  (then http://127.0.0.1:5000)", file=file)


def _label(row: dict[str, Any]) -> str:
    status = "" if row["status"] in ("OK", "UNFINISHED") else f" ({row['status'].lower()})"
    trial = f"{row['trial']} " if row["trial"] != "-" else ""
    return f"{trial}{row['task']} seed={row['seed']}{status}"
