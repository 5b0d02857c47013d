"""One trial: its stages (rayexp.stages) run in order by a short loop, each resumable.

`run_trial(config)` is the Tune function trainable. Every stage reports its metrics to Tune as
they happen and logs them to the trial's MLflow run; after each stage it hands Tune a checkpoint
holding the stage state, so a trial that dies (worker killed, node lost) resumes at the first
unfinished stage and a finished stage is never redone or logged twice. What stages produce is
stored under the sweep's storage path and read back through ``ctx.artifacts``
(:class:`rayexp.artifacts.TrialArtifacts`).

The driver hands each trial its :class:`~rayexp.resolved.ResolvedTrial` (``config["trial"]``, a
dump), so a worker re-derives and re-checks nothing. What only the worker knows, its device, is
decided once here (:func:`rayexp.context.trial_device`, from the GPU share Ray granted it and
``pretrain.device``) and every torch stage asks the context for it. Debug path without Tune:
``python -m rayexp.trial sweeps/quickstart.yaml [task]`` runs the first grid point of a sweep in
this process (tune.report becomes a print).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rayexp import tracking
from rayexp.artifacts import TrialArtifacts
from rayexp.config import flatten, load_points
from rayexp.context import Reporter, StageState, TrialContext, trial_device
from rayexp.machine import machine_tags
from rayexp.ray_local import start_local_ray
from rayexp.resolved import ResolvedTrial
from rayexp.settings import TrialConfig
from rayexp.specs import process_label
from rayexp.stages import stages_for

#: Fault injection for the fault-tolerance tests: ``RAYEXP_KILL_AT=STAGE@MARKER`` SIGKILLs the
#: worker once when STAGE starts (the MARKER file records that it happened).
KILL_AT = "RAYEXP_KILL_AT"
#: ``RAYEXP_HANG_AT=STAGE`` makes the worker hang, reporting nothing, when STAGE starts (the stall
#: watchdog's test: rayexp.monitor)
HANG_AT = "RAYEXP_HANG_AT"
logger = logging.getLogger(__name__)


def gpu_share(meta: dict[str, Any], use_tune: bool) -> float:
    """The GPU share this trial holds: ``meta["gpu"]`` when the caller says (the debug path, tests),
    else what Ray granted this Tune worker (its placement group's first bundle: ``resources.gpu``).
    Ray's grant is the fact, not the sweep file: it is what ``CUDA_VISIBLE_DEVICES`` was set from."""
    if "gpu" in meta:
        return float(meta["gpu"])
    if not use_tune:
        return 0.0
    import ray  # a Tune worker has Ray loaded already

    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def _open_run(trial: TrialConfig, meta: dict[str, Any], key: str):
    if not meta.get("tracking_uri"):
        return None
    return tracking.TrialRun(
        meta["tracking_uri"],
        meta["experiment_id"],
        meta["parent_run_id"],
        key,
        run_name=tracking.trial_run_name(trial.task.name, trial.seed, process_label(trial.process)),
        params=flatten(trial.model_dump()),
        tags={
            "rayexp.task": trial.task.name,
            "rayexp.process": process_label(trial.process),
            "rayexp.seed": str(trial.seed),
            **meta.get("tags", {}),
        },
    )


def _maybe_kill(stage: str) -> None:
    spec = os.environ.get(KILL_AT, "")
    name, _, marker = spec.rpartition("@")
    if name == stage and marker and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    while os.environ.get(HANG_AT) == stage:
        time.sleep(1)


def run_trial(config: dict[str, Any]) -> dict[str, float]:
    """Tune function trainable. `config`: {"point": {"trial": a ResolvedTrial's dump, "axes"}, "meta"}
    (rayexp.sweep.param_space)."""
    meta = config["meta"]
    if meta.get("quiet_checkpoints", True):
        # Tune logs a line per reported checkpoint (one per stage and PPO iteration here); the
        # driver prints one line per finished stage instead
        for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
            logging.getLogger(name).setLevel(logging.WARNING)
    resolved = ResolvedTrial.model_validate(config["point"]["trial"])
    trial = resolved.config
    use_tune = meta.get("use_tune", True)
    # before the MLflow run opens: a device the trial cannot have is a config error (DeviceError)
    gpu = gpu_share(meta, use_tune)
    device = trial_device(resolved.pretrain.device, gpu)
    if gpu > 0 and device == "cpu":
        logger.warning("trial holds %g GPU but runs on the CPU (pretrain.device %s)", gpu, resolved.pretrain.device)
    key = tracking.trial_key(meta.get("parent_run_id", "local"), trial.model_dump())
    run = _open_run(trial, meta, key)
    report = Reporter(run, use_tune)
    if run is not None:
        import ray  # a Tune worker has Ray loaded already; the debug path starts one

        node = ray.get_runtime_context().get_node_id() if use_tune else "local"
        run.set_tags(
            {
                "rayexp.worker_pid": os.getpid(),
                "rayexp.node_id": node,
                "rayexp.host": socket.gethostname(),
                "rayexp.device": device,  # a tag, not a metric: where it ran is no result of the trial
                "rayexp.gpu": gpu,
            }
            | machine_tags(device)  # what a non-reproduction is traced by (docs/reproducibility.md)
        )

    workdir = Path(tempfile.mkdtemp(prefix="rayexp-trial-"))
    state_dir = workdir / "state"
    state_dir.mkdir()
    if use_tune:
        from ray import tune  # see above

        restored = tune.get_checkpoint()
        if restored is not None:
            restored.to_directory(str(state_dir))
    state = StageState(state_dir)
    report.latest.update(state.data["latest"])
    if run is not None and state.data["done"]:
        run.set_tags({"rayexp.resumed_after": state.data["done"][-1]})

    artifacts = TrialArtifacts(meta["storage_path"], meta.get("sweep", "debug"), key, device=device)
    ctx = TrialContext(resolved, meta, report, state, artifacts, workdir, device=device, gpu=gpu)
    stages = stages_for(resolved)

    def snapshot() -> None:
        """Hand Tune a copy of the state directory as this trial's checkpoint."""
        copy = Path(tempfile.mkdtemp(prefix="ckpt-", dir=workdir))
        shutil.copytree(state_dir, copy, dirs_exist_ok=True)
        report.metrics({}, step=0, checkpoint_dir=copy)
        shutil.rmtree(copy, ignore_errors=True)  # tune.report persisted it to storage before returning

    ctx.snapshot = snapshot
    try:
        artifacts.write_meta(
            trial.model_dump(),
            ctx.pretrain_key,
            ctx.env_config,
            resolved.facts | {"pretrain_seed": ctx.pre_cfg.seed},
            start_key=ctx.start_key,
            ppo=resolved.ppo.model_dump(),
        )
        clock = time.perf_counter()
        for i, stage in enumerate(stages):
            if state.done(stage.name):
                continue
            _maybe_kill(stage.name)
            stage.run(ctx)
            now = time.perf_counter()
            seconds = {f"time/{stage.name.replace(':', '_')}_s": now - clock}
            clock = now
            if run is not None:
                run.log_metrics(seconds, step=0)
            report.latest.update(seconds | {"stage": float(i + 1), "n_stages": float(len(stages))})
            artifacts.write_metrics(report.latest)
            state.finish(stage.name, report.latest)
            snapshot()
        artifacts.apply_retention(trial.artifacts.retention)
        artifacts.mark_finished()
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if run is not None:
        run.set_tags({"rayexp.artifacts": artifacts.store.path(artifacts.rel)})
        run.finish("FINISHED")
    return dict(report.latest)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sweep, points = load_points(argv[0])
    point = next((p for p in points if len(argv) < 2 or p.trial.task.name == argv[1]), points[0])
    storage = tempfile.mkdtemp(prefix="rayexp-debug-")
    config = {
        "point": {"trial": point.trial.model_dump(), "axes": point.axes},
        # no Tune worker to ask: the sweep file's share stands for what Ray would grant
        "meta": {"use_tune": False, "storage_path": storage, "sweep": sweep.name, "gpu": sweep.resources.gpu},
    }
    import ray  # the debug path's own Ray, for RLlib inside the PPO stage

    start_local_ray(num_cpus=1)
    try:
        for key, value in sorted(run_trial(config).items()):
            print(f"{key:60s} {value:.4g}")
        print(f"artifacts under {storage}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
