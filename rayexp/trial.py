"""One trial: pretrain (or reuse) -> probe before -> PPO on the task -> probe after -> analyses.

`run_trial(config)` is the Tune function trainable. Every stage reports its metrics to Tune as
they happen and logs them to the trial's MLflow run; after each stage it reports a checkpoint
holding the stage state, so a trial that dies (worker killed, node lost) resumes at the first
unfinished stage and a finished stage is never redone or logged twice.

Stage implementations are imported inside the stages: the driver validates sweep files
without importing torch or RLlib, and workers pay for them only when they run.

Debug path without Tune: ``python -m rayexp.trial sweeps/quickstart.yaml [task]`` runs the
first grid point of a sweep in this process (tune.report becomes a print).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayexp.config import TrialConfig, check_trial, flatten, process_label, resolve_trial, task_process

STAGES = ("pretrain", "probe_pre", "ppo", "probe_post", "analyses")


class _Reporter:
    """Sends stage metrics to MLflow (by step) and to Tune (cumulative latest values)."""

    def __init__(self, run, use_tune: bool):
        self.run, self.use_tune = run, use_tune
        self.latest: dict[str, float] = {}

    def metrics(self, metrics: dict[str, Any], step: int, checkpoint_dir: Path | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _finite_number(v)}
        if self.run is not None and clean:
            self.run.log_metrics(clean, step)
        self.latest.update(clean)
        self._tune(checkpoint_dir)

    def _tune(self, checkpoint_dir: Path | None) -> None:
        if not self.use_tune:
            return
        from ray import tune

        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
        tune.report(dict(self.latest), checkpoint=checkpoint)


def _finite_number(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f)


class _State:
    """Stage progress, persisted in the Tune checkpoint directory."""

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


# ---------------------------------------------------------------------------------------------
# Stages


def pretrain_config(trial: TrialConfig, cpus: float):
    """The trial's PretrainConfig: seeded by the trial, threads matching the trial's CPUs."""
    from models.pretrain import PretrainConfig

    defaults = {"seed": trial.seed, "num_threads": max(1, int(cpus)), "progress": False}
    return PretrainConfig(**{**defaults, **trial.pretrain})


def _pretrain(trial: TrialConfig, model_cfg, cfg, process, storage_path: str, scratch: Path, report: _Reporter):
    """Pretrained model from the cache, training it first if no trial has yet."""
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.pretrain import pretrain
    from rayexp.cache import PretrainCache, pretrain_key

    # threads and progress bars do not change the result, so they stay out of the key
    determining = cfg.model_dump(exclude={"num_threads", "progress", "device", "compile"})
    key = pretrain_key(trial.process, model_cfg.model_dump(), determining, cfg.seed)
    live: list[dict] = []

    def build(out: Path) -> None:
        def callback(metrics: dict, step: int) -> None:
            live.append(metrics)
            report.metrics({f"pretrain/{k}": v for k, v in metrics.items() if k != "step"}, step)

        result = pretrain(process, model_cfg, cfg, callback=callback, process_spec=trial.process)
        save_checkpoint(out / "model.pt", result.model, extra={"pretrain_key": key, "process_spec": trial.process})
        (out / "history.json").write_text(json.dumps([dict(h) for h in result.history]))
        meta = {"key": key, "process": trial.process, "model": model_cfg.model_dump(), "pretrain": determining}
        (out / "meta.json").write_text(json.dumps(meta))

    entry, hit = PretrainCache(storage_path).get_or_create(key, build, scratch)
    if not live:
        # a cached pretraining's curve is replayed so every trial's run holds it
        for row in json.loads((entry / "history.json").read_text()):
            report.metrics({f"pretrain/{k}": v for k, v in row.items() if k != "step"}, row.get("step", 0))
    if report.run is not None:
        report.run.set_tags({"rayexp.pretrain_key": key, "rayexp.pretrain_cache": "hit" if hit else "miss"})
    report.latest["pretrain/cache_hit"] = float(hit)
    model, _ = load_checkpoint(entry / "model.pt")
    return model.eval(), entry / "model.pt"


def _probe(phase: str, model, random_model, trial: TrialConfig, process, report: _Reporter, run, state_dir: Path):
    """Probe table, metrics probe/{phase}/{target}/{hook}/{metric} and figures; returns the table."""
    import pyarrow.parquet as pq

    from rayexp import probes

    cfg = trial.probe
    result = probes.probe_model(
        model,
        random_model,
        process,
        n_seq=cfg.n_seq,
        seq_len=cfg.seq_len,
        seed=trial.seed,
        hooks=cfg.hooks,
        test_frac=cfg.test_frac,
        alpha=cfg.alpha,
    )
    pq.write_table(result.table, state_dir / f"probe_{phase}.parquet")
    metrics = {}
    for target in dict.fromkeys(result.table.column("target").to_pylist()):
        metrics.update({f"probe/{phase}/{target}/{k}": v for k, v in probes.summarize(result.table, target).items()})
    report.metrics(metrics, step=0)
    if run is None:
        return result.table
    run.log_table(f"probe_{phase}", result.table)
    if cfg.figures:
        from rayexp import figures

        hook = probes.CONCAT if (("belief", probes.CONCAT) in result.predictions) else model.hook_names[-1]
        if ("belief", hook) in result.predictions:
            true, pred = result.held_out("belief", hook)
            run.log_figure(f"belief_simplex_{phase}", figures.belief_simplex(true, pred, title=f"{phase}: {hook}"))
        first = state_dir / f"probe_{phase.replace('post', 'pre')}.parquet"
        if phase.endswith("post") and first.exists():
            before = pq.read_table(first)
            run.log_figure(
                "probe_skill_by_layer" + ("_rl" if phase.startswith("rl") else ""),
                figures.skill_by_layer(before, result.table, title="probe skill before / after RL"),
            )
    return result.table


def _random_init(model_cfg, seed: int):
    """The probe control: the trained architecture at its initialisation (pretraining's seed)."""
    from models.transformer import Transformer

    return Transformer(model_cfg, seed=seed).eval()


def _env_config(trial: TrialConfig, n_ctx: int) -> dict[str, Any]:
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
    # The policy module must act over the reward's own action set; rewards choose a default
    # (e.g. joint_target: factor A's m tokens), so it is resolved here and passed explicitly.
    from envs.rewards import make_reward
    from rayexp.config import build_process

    reward = make_reward(task.reward, build_process(env["process"]), task.reward_params, task.action_tokens)
    env["action_tokens"] = [int(t) for t in reward.action_tokens]
    return env


def _ppo(
    trial: TrialConfig,
    n_ctx: int,
    checkpoint_path: Path,
    out_path: Path,
    report: _Reporter,
    state_dir: Path,
    on_checkpoint: Callable[[], None],
):
    """PPO, resumable: its state is saved under ``state_dir`` (part of the trial's Tune checkpoint).

    A retried trial resumes after the last saved iteration; the replayed iterations' metrics are
    only logged if this MLflow run lacks them, so every PPO metric has one point per iteration.
    """
    from rayexp.ppo import PPOSettings, saved_iteration, train_ppo

    raw = {**trial.ppo, **trial.task.ppo}
    if "seed" in PPOSettings.model_fields and "seed" not in raw:
        raw["seed"] = trial.seed
    settings = PPOSettings(**raw)
    prefix = f"ppo/{trial.task.name}"
    last = report.run.last_step(f"{prefix}/env_steps") if report.run is not None else None
    logged = [-1 if last is None else last]

    def callback(metrics: dict, step: int) -> None:
        if step <= logged[0]:
            return  # logged by an earlier attempt of this trial
        report.metrics({f"{prefix}/{k}": v for k, v in metrics.items() if k != "iteration"}, step)
        logged[0] = step

    state_dir.mkdir(exist_ok=True)
    resumed_after = saved_iteration(state_dir)
    if resumed_after is not None and report.run is not None:
        report.run.set_tags({"rayexp.ppo_resumed_after_iteration": resumed_after})
    return train_ppo(
        settings,
        _env_config(trial, n_ctx),
        str(checkpoint_path),
        str(out_path),
        callback,
        state_dir=state_dir,
        on_checkpoint=lambda iteration: on_checkpoint(),
    )


def _analyses(trial: TrialConfig, before, after, report: _Reporter, run, workdir: Path) -> None:
    from rayexp.analyses import AnalysisContext, run_analysis

    for name in trial.analyses:
        ctx = AnalysisContext(
            trial=trial.model_dump(), task=trial.task.name, seed=trial.seed, out_dir=str(workdir / f"analysis_{name}")
        )
        Path(ctx.out_dir).mkdir(parents=True, exist_ok=True)
        result = run_analysis(name, before, after, trial.process, ctx)
        report.metrics({f"analysis/{name}/{k}": v for k, v in result.metrics.items()}, step=0)
        if run is not None:
            for tname, table in result.tables.items():
                run.log_table(tname, table)
            for fname, fig in result.figures.items():
                run.log_figure(fname, fig)


# ---------------------------------------------------------------------------------------------
# The trainable


def run_trial(config: dict[str, Any]) -> dict[str, float]:
    """Tune function trainable. `config`: {"base", "task", "axes", "meta"} (see rayexp.sweep)."""
    from models.checkpoint import load_checkpoint
    from models.transformer import TransformerConfig
    from rayexp import tracking
    from rayexp.config import build_process

    meta = config["meta"]
    trial = resolve_trial(config["base"], config["task"], config.get("axes", {}))
    facts = check_trial(trial)
    model_cfg = TransformerConfig(**{"d_vocab": facts["d_vocab"], **trial.model})
    process = build_process(trial.process)
    pre_cfg = pretrain_config(trial, meta.get("cpus", 1))
    use_tune = meta.get("use_tune", True)
    if use_tune:
        import ray

    run = None
    if meta.get("tracking_uri"):
        key = tracking.trial_key(meta["parent_run_id"], trial.model_dump())
        run = tracking.TrialRun(
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
    report = _Reporter(run, use_tune)
    if run is not None:
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
    state = _State(state_dir)
    report.latest.update(state.data["latest"])
    if run is not None and state.data["done"]:
        run.set_tags({"rayexp.resumed_after": state.data["done"][-1]})

    clock = [time.perf_counter()]

    def stage_done(stage: str) -> None:
        now = time.perf_counter()
        report.latest["stage"] = float(STAGES.index(stage) + 1)
        seconds = {f"time/{stage}_s": now - clock[0]}
        clock[0] = now
        if run is not None:
            run.log_metrics(seconds, step=0)
        report.latest.update(seconds)
        state.finish(stage, report.latest)
        snapshot()

    def snapshot() -> None:
        """Hand Tune a copy of the state directory as this trial's checkpoint."""
        copy = Path(tempfile.mkdtemp(prefix="ckpt-", dir=workdir))
        shutil.copytree(state_dir, copy, dirs_exist_ok=True)
        report.metrics({}, step=0, checkpoint_dir=copy)
        shutil.rmtree(copy, ignore_errors=True)  # tune.report persisted it to storage before returning

    try:
        if state.done("pretrain"):  # a cache hit: nothing to log again
            model_before, pre_path = _pretrain(
                trial, model_cfg, pre_cfg, process, meta["storage_path"], workdir, _Reporter(None, False)
            )
        else:
            model_before, pre_path = _pretrain(
                trial, model_cfg, pre_cfg, process, meta["storage_path"], workdir, report
            )
            stage_done("pretrain")

        random_model = _random_init(model_cfg, pre_cfg.seed)
        stream_spec = task_process(trial)
        stream = None if stream_spec == trial.process else build_process(stream_spec)
        if not state.done("probe_pre"):
            _probe("pre", model_before, random_model, trial, process, report, run, state_dir)
            if stream is not None:
                _probe("rl_pre", model_before, random_model, trial, stream, report, run, state_dir)
            stage_done("probe_pre")

        after_path = state_dir / "model_after.pt"
        if not state.done("ppo"):
            _ppo(trial, model_cfg.n_ctx, pre_path, after_path, report, state_dir / "ppo", snapshot)
            if run is not None:
                run.log_artifact(after_path, "weights")
            stage_done("ppo")
        model_after, _ = load_checkpoint(after_path)

        if not state.done("probe_post"):
            _probe("post", model_after, random_model, trial, process, report, run, state_dir)
            if stream is not None:
                _probe("rl_post", model_after, random_model, trial, stream, report, run, state_dir)
            stage_done("probe_post")

        if not state.done("analyses"):
            _analyses(trial, model_before, model_after, report, run, workdir)
            stage_done("analyses")
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if run is not None:
        run.finish("FINISHED")
    return dict(report.latest)


def main(argv: list[str] | None = None) -> None:
    from rayexp.config import grid_points, load_sweep

    argv = sys.argv[1:] if argv is None else argv
    sweep, _ = load_sweep(argv[0])
    task = next((t for t in sweep.tasks if len(argv) < 2 or t.name == argv[1]), sweep.tasks[0])
    import ray

    from rayexp.sweep import start_local_ray

    start_local_ray(num_cpus=1)
    storage = tempfile.mkdtemp(prefix="rayexp-debug-")
    config = {
        "base": sweep.base.model_dump(),
        "task": task.model_dump(),
        "axes": grid_points(sweep)[0],
        "meta": {"use_tune": False, "storage_path": storage},
    }
    try:
        for key, value in sorted(run_trial(config).items()):
            print(f"{key:60s} {value:.4g}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
