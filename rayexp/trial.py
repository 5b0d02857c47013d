"""One trial: its stages (rayexp.stages) run in order by a short loop, each resumable.

`run_trial(config)` is the Tune function trainable. Every stage reports its metrics to Tune as
they happen and logs them to the trial's MLflow run; after each stage it hands Tune a checkpoint
holding the stage state, so a trial that dies (worker killed, node lost) resumes at the first
unfinished stage and a finished stage is never redone or logged twice. What stages produce is
stored under the sweep's storage path and read back through ``ctx.artifacts``
(:class:`rayexp.artifacts.TrialArtifacts`).

Debug path without Tune: ``python -m rayexp.trial sweeps/quickstart.yaml [task]`` runs the
first grid point of a sweep in this process (tune.report becomes a print).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rayexp.artifacts import TrialArtifacts, log_spaced_steps
from rayexp.config import TrialConfig, check_trial, flatten, process_label, resolve_trial, task_process

#: Fault injection for the fault-tolerance tests: ``RAYEXP_KILL_AT=STAGE@MARKER`` SIGKILLs the
#: worker once when STAGE starts (the MARKER file records that it happened).
KILL_AT = "RAYEXP_KILL_AT"


#: (metric, label) pairs of the console summary and `rayexp report`; ``{task}`` is the task name
SUMMARY_COLUMNS = (
    ("pretrain/loss_gap", "pretrain gap"),
    ("ppo/{task}/reward_per_step", "reward/step"),
    ("analysis/composition/reward/post/greedy", "greedy reward"),
    ("analysis/composition/ceiling/optimum", "optimum"),
    ("analysis/composition/composed/post", "kappa"),
    ("analysis/composition/reweighting_r2/post", "R2 rewt"),
    ("ppo/{task}/approx_kl", "approx_kl"),
    ("analysis/weight_diff/rel_frobenius", "|dW|/|W|"),
)


def for_tune(key: str) -> bool:
    """What a trial reports to Tune: progress, stage times, PPO curves and the summary's metrics.
    Everything else (hundreds of probe and analysis metrics) goes to MLflow only; sending it to Tune
    at every stage and PPO iteration made each trial's Tune logs ~6 MB."""
    summary = {k for k, _ in SUMMARY_COLUMNS}
    return key in ("stage", "n_stages") or key.startswith(("time/", "ppo/", "pretrain/")) or key in summary


class Reporter:
    """Sends stage metrics to MLflow (by step) and to Tune (cumulative latest values)."""

    def __init__(self, run, use_tune: bool):
        self.run, self.use_tune = run, use_tune
        self.latest: dict[str, float] = {}

    def metrics(self, metrics: dict[str, Any], step: int, checkpoint_dir: Path | None = None, once=False) -> None:
        """``once``: skip keys this run already holds (a stage re-run after a kill mid-logging)."""
        clean = {k: float(v) for k, v in metrics.items() if _finite_number(v)}
        if once and self.run is not None and clean:
            have = self.run.metric_keys()
            clean_new = {k: v for k, v in clean.items() if k not in have}
        else:
            clean_new = clean
        if self.run is not None and clean_new:
            self.run.log_metrics(clean_new, step)
        self.latest.update(clean)
        if self.use_tune:
            from ray import tune

            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
            tune.report({k: v for k, v in self.latest.items() if for_tune(k)}, checkpoint=checkpoint)


def _finite_number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class StageState:
    """Which stages are done, persisted in the Tune checkpoint directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        path = directory / "state.json"
        self.data = json.loads(path.read_text()) if path.exists() else {"done": [], "latest": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def finish(self, stage: str, latest: dict[str, float]) -> None:
        self.data["done"].append(stage)
        self.data["latest"] = latest
        (self.dir / "state.json").write_text(json.dumps(self.data))


def pretrain_config(trial: TrialConfig, cpus: float):
    """The trial's PretrainConfig: seeded by the trial, threads matching the trial's CPUs, and
    log-spaced checkpoints (``artifacts.pretrain_checkpoints``) unless the file lists its own."""
    from models.pretrain import PretrainConfig

    raw = trial.pretrain.model_dump(exclude_unset=True)  # unset fields keep following the trial (its seed)
    cfg = PretrainConfig(**{"seed": trial.seed, "num_threads": max(1, int(cpus)), "progress": False, **raw})
    if "checkpoint_steps" not in raw:
        cfg = cfg.model_copy(
            update={"checkpoint_steps": log_spaced_steps(cfg.steps, trial.artifacts.pretrain_checkpoints)}
        )
    return cfg


def env_config(trial: TrialConfig, n_ctx: int) -> dict[str, Any]:
    """The RL env config of the trial's task (``envs.gym_env.make_env``), action set resolved."""
    from envs.gym_env import action_tokens

    task = trial.task
    context = task.context or n_ctx
    env = {
        "process": task_process(trial),
        "context": context,
        "episode_len": task.episode_len or context,
        "reward": task.reward,
        "reward_params": task.reward_params,
        "seed": trial.seed,
    }
    if task.env != "sequence":
        env["env"] = task.env
    if task.shuffle_reward:
        env["shuffle_reward"] = True
    if task.action_tokens is not None:
        env["action_tokens"] = list(task.action_tokens)
    # the policy module must act over the reward's own action set, which a reward may choose
    env["action_tokens"] = [int(t) for t in action_tokens(dict(env))]
    return env


@dataclass
class TrialContext:
    """What every stage gets: the resolved trial, where it stores things, and how it reports."""

    trial: TrialConfig
    meta: dict[str, Any]
    facts: dict[str, Any]
    report: Reporter
    state: StageState
    artifacts: TrialArtifacts
    workdir: Path
    snapshot: Any = None  # () -> None: hand Tune the current state directory
    n_rollouts: int = 0

    @property
    def storage_path(self) -> str:
        return self.meta["storage_path"]

    @cached_property
    def model_cfg(self):
        return self.trial.model.resolve(self.facts["d_vocab"])

    @cached_property
    def pre_cfg(self):
        return pretrain_config(self.trial, self.meta.get("cpus", 1))

    @cached_property
    def pretrain_determining(self) -> dict[str, Any]:
        # threads, progress bars and the device do not change the result, so they stay out of the key;
        # the precision does, and `auto` means bf16 on one machine and fp32 on another, so the key
        # holds the precision this worker resolves it to
        from models.pretrain import resolve_precision

        determining = self.pre_cfg.model_dump(exclude={"num_threads", "progress", "device", "compile"})
        return determining | {"precision": resolve_precision(self.pre_cfg)}

    @cached_property
    def pretrain_key(self) -> str:
        from rayexp.cache import pretrain_key

        return pretrain_key(
            self.trial.process, self.model_cfg.model_dump(), self.pretrain_determining, self.pre_cfg.seed
        )

    @cached_property
    def process(self):
        from rayexp.config import build_process

        return build_process(self.trial.process)

    @cached_property
    def env_config(self) -> dict[str, Any]:
        return env_config(self.trial, self.model_cfg.n_ctx)

    @cached_property
    def ppo_settings(self):
        """The task's PPOSettings (base section, the task's overrides, the trial's seed)."""
        from rayexp.config import ppo_settings

        return ppo_settings(self.trial)

    @cached_property
    def start_env_config(self) -> dict[str, Any] | None:
        """M_A's env config (``task.start_from``): this task's env with M_A's reward and seed."""
        start = self.trial.task.start_from
        if start is None:
            return None
        return self.env_config | {"reward": start.reward, "reward_params": start.reward_params, "seed": start.seed}

    @cached_property
    def start_settings(self):
        """M_A's PPO settings: this task's, with M_A's iterations and seed, and no checkpoints."""
        start = self.trial.task.start_from
        if start is None:
            return None
        update = {"iterations": start.iterations, "seed": start.seed, "save_every": 0, "checkpoint_every": 0}
        return self.ppo_settings.model_copy(update=update)

    @cached_property
    def start_key(self) -> str | None:
        """Cache key of M_A (None without ``task.start_from``): its pretrained model, env and PPO settings."""
        if self.start_env_config is None:
            return None
        import hashlib

        blob = json.dumps(
            {"pretrain": self.pretrain_key, "env": self.start_env_config, "ppo": self.start_settings.model_dump()},
            sort_keys=True,
        )
        return "start-" + hashlib.sha256(blob.encode()).hexdigest()[:24]

    def cached_model_path(self, key: str | None = None) -> str:
        """Local path of a pretrain cache entry's model: ``key``'s, by default the one PPO starts from
        (M_A when the task names one, else the pretrained model)."""
        key = key or self.start_key or self.pretrain_key
        return str(self.artifacts.store.local_file(f"pretrain_cache/{key}/model.pt"))


def _open_run(trial: TrialConfig, meta: dict[str, Any], key: str):
    from rayexp import tracking

    if not meta.get("tracking_uri"):
        return None
    return tracking.TrialRun(
        meta["tracking_uri"],
        meta["experiment_id"],
        meta["parent_run_id"],
        key,
        run_name=f"{process_label(trial.process)}__{trial.task.name}__{trial.seed}__{time.strftime('%H%M%S')}",
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


def run_trial(config: dict[str, Any]) -> dict[str, float]:
    """Tune function trainable. `config`: {"base", "task", "axes", "meta"} (see rayexp.sweep)."""
    from rayexp import tracking
    from rayexp.stages import rollouts_wanted, stages_for

    meta = config["meta"]
    if meta.get("quiet_checkpoints", True):
        # Tune logs a line per reported checkpoint (one per stage and PPO iteration here); the
        # driver prints one line per finished stage instead
        for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
            logging.getLogger(name).setLevel(logging.WARNING)
    trial = resolve_trial(config["base"], config["task"], config.get("axes", {}))
    facts = check_trial(trial)
    use_tune = meta.get("use_tune", True)
    key = tracking.trial_key(meta.get("parent_run_id", "local"), trial.model_dump())
    run = _open_run(trial, meta, key)
    report = Reporter(run, use_tune)
    if run is not None:
        import ray

        node = ray.get_runtime_context().get_node_id() if use_tune else "local"
        run.set_tags({"rayexp.worker_pid": os.getpid(), "rayexp.node_id": node, "rayexp.host": socket.gethostname()})

    workdir = Path(tempfile.mkdtemp(prefix="rayexp-trial-"))
    state_dir = workdir / "state"
    state_dir.mkdir()
    if use_tune:
        from ray import tune

        restored = tune.get_checkpoint()
        if restored is not None:
            restored.to_directory(str(state_dir))
    state = StageState(state_dir)
    report.latest.update(state.data["latest"])
    if run is not None and state.data["done"]:
        run.set_tags({"rayexp.resumed_after": state.data["done"][-1]})

    artifacts = TrialArtifacts(meta["storage_path"], meta.get("sweep", "debug"), key)
    ctx = TrialContext(trial, meta, facts, report, state, artifacts, workdir, n_rollouts=rollouts_wanted(trial))
    stages = stages_for(trial)

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
            facts | {"pretrain_seed": ctx.pre_cfg.seed},
            start_key=ctx.start_key,
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
    from rayexp.config import grid_points, load_sweep

    argv = sys.argv[1:] if argv is None else argv
    sweep, _ = load_sweep(argv[0])
    task = next((t for t in sweep.tasks if len(argv) < 2 or t.name == argv[1]), sweep.tasks[0])
    storage = tempfile.mkdtemp(prefix="rayexp-debug-")
    config = {
        "base": sweep.base.model_dump(),
        "task": task.model_dump(),
        "axes": grid_points(sweep)[0],
        "meta": {"use_tune": False, "storage_path": storage, "sweep": sweep.name},
    }
    import ray

    from rayexp.ray_local import start_local_ray

    start_local_ray(num_cpus=1)
    try:
        for key, value in sorted(run_trial(config).items()):
            print(f"{key:60s} {value:.4g}")
        print(f"artifacts under {storage}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
