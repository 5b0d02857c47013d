"""The stages of a trial, declared once: name, what each needs, what it produces.

A stage is a function ``run(ctx: rayexp.trial.TrialContext) -> None`` that reads what earlier
stages produced through ``ctx.artifacts`` (:class:`rayexp.artifacts.TrialArtifacts`) and stores
what it produces there. :func:`stages_for` lists a trial's stages in order: the fixed pipeline,
then one stage per analysis in the sweep file, so each analysis is resumable on its own.
Implementations import torch and RLlib inside the functions (models.*, rayexp.ppo, rayexp.rollouts,
rayexp.figures): the driver imports this module to name a trial's stages and never needs them.

Every torch stage runs on the trial's device (``ctx.device``, decided once by rayexp.context.trial_device):
pretraining, PPO's learner (its share of the trial's GPU; env runners stay on the CPU), probes, the
rollouts and the analyses in :data:`DEVICE_READY` (models load there through ``ctx.artifacts``; their
code builds its inputs on the model's device and brings results to the CPU only as numpy). An analysis
not in it reads CPU copies (``ctx.artifacts.on("cpu")``): a CUDA model would fail on CPU tensors, not
compute something else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayexp import ppo_state, probes, registry
from rayexp.analysis import reporting_progress
from rayexp.cache import PretrainCache
from rayexp.context import TrialContext
from rayexp.machine import machine_tags
from rayexp.resolved import ResolvedTrial
from rayexp.rollouts import collect
from rayexp.specs import build_process

#: Trial analyses whose every forward pass and torch fit runs on the model's own device
#: (``rayexp.policy.model_device``) and reads results back with ``.cpu()``: every trial analysis the
#: registry holds (tests/test_device.py runs each on a stand-in device and checks no op mixes devices).
#: Random draws stay on the CPU's generators and move (random_perturbation's direction, SGLD's noise),
#: so they are the same numbers on every device. Not yet run on a GPU: benchmarks/bench_gpu.py's
#: ``analyses`` section compares them across devices.
DEVICE_READY = frozenset(
    {
        "weight_diff",
        "representation",
        "geometry",
        "composition",
        "policy_kl",
        "concept_vectors",
        "rare",
        "negation",
        "llc",
    }
)


#: Where a long stage is, reported to Tune (not MLflow: they are no result) while the stage runs, for the
#: driver's progress lines (rayexp.monitor); removed when the stage ends.
PRETRAIN_STEP = "pretrain/step"
PPO_ITERATION = "ppo/iteration"
ANALYSIS_DONE, ANALYSIS_TOTAL = "progress/analysis_done", "progress/analysis_total"


def heartbeat(ctx: TrialContext) -> Callable[[], None]:
    """A report to Tune with nothing new: progress for the driver's watchdog while the trial waits on
    the pretrain cache's lock for another trial's pretraining (rayexp.cache)."""
    return lambda: ctx.report.metrics({}, step=0)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[TrialContext], None]
    needs: tuple[str, ...]  # artifact names (rayexp.analyses.NEEDS vocabulary)
    produces: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# pretrain


def pretrain(ctx: TrialContext) -> None:
    """Train (or find in the content-addressed cache) the pretrained model and its checkpoints."""
    from models.checkpoint import save_checkpoint  # torch
    from models.pretrain import pretrain as train  # torch

    live: list[dict] = []
    report = ctx.report

    def build(out: Path) -> None:
        def callback(metrics: dict, step: int) -> None:
            live.append(metrics)
            report.latest[PRETRAIN_STEP] = step  # to Tune only: the driver's progress line (rayexp.monitor)
            report.metrics({f"pretrain/{k}": v for k, v in metrics.items() if k != "step"}, step)

        result = train(
            ctx.process,
            ctx.model_cfg,
            ctx.pre_cfg,
            out_dir=out / "checkpoints",
            callback=callback,
            process_spec=ctx.trial.process,
        )
        (out / "checkpoints" / "final.pt").unlink(missing_ok=True)  # model.pt is the final model
        save_checkpoint(
            out / "model.pt", result.model, extra={"pretrain_key": ctx.pretrain_key, "process_spec": ctx.trial.process}
        )
        (out / "history.json").write_text(json.dumps([dict(h) for h in result.history]))
        meta = {"key": ctx.pretrain_key, "process": ctx.trial.process, "model": ctx.model_cfg.model_dump()}
        meta["machine"] = machine_tags(ctx.pre_cfg.device)  # a cache hit's trial ran elsewhere: where it trained
        (out / "meta.json").write_text(json.dumps(meta | {"pretrain": ctx.pretrain_determining}))

    _, hit = PretrainCache(ctx.storage_path).get_or_create(ctx.pretrain_key, build, ctx.workdir, heartbeat(ctx))
    report.latest.pop(PRETRAIN_STEP, None)
    if not live:
        # a cached pretraining's curve is replayed so every trial's run holds it
        for row in ctx.artifacts.store.read_json(f"pretrain_cache/{ctx.pretrain_key}/history.json"):
            report.metrics({f"pretrain/{k}": v for k, v in row.items() if k != "step"}, row.get("step", 0))
    if report.run is not None:
        trained_on = ctx.artifacts.store.read_json(f"pretrain_cache/{ctx.pretrain_key}/meta.json").get("machine", {})
        report.run.set_tags(
            {
                # entries cached before the machine was recorded say so
                "rayexp.pretrain_cpu": trained_on.get("rayexp.cpu", "not recorded"),
                "rayexp.pretrain_cpu_bf16": trained_on.get("rayexp.cpu_bf16", "not recorded"),
                "rayexp.pretrain_key": ctx.pretrain_key,
                "rayexp.pretrain_cache": "hit" if hit else "miss",
                "rayexp.pretrain_precision": ctx.pretrain_determining["precision"],  # auto, resolved
                "rayexp.pretrain_device": ctx.pre_cfg.device,  # decided for the trial (a hit trained elsewhere)
            }
        )
    report.latest["pretrain/cache_hit"] = float(hit)


# ---------------------------------------------------------------------------------------------
# start_from: M_A


def start_from(ctx: TrialContext) -> None:
    """Train (or find in the cache) M_A: the pretrained model after PPO on ``task.start_from``'s
    reward in this task's env, with M_A's own seed. Trials naming the same M_A train it once (the
    pretrain cache's lock); its reward curve is logged as ``start/{metric}`` in every such trial."""
    from rayexp.ppo import train_ppo  # torch + RLlib

    live: list[dict] = []
    report = ctx.report

    def log(metrics: dict, step: int) -> None:
        report.metrics({f"start/{k}": v for k, v in metrics.items() if k != "iteration"}, step)

    def build(out: Path) -> None:
        def callback(metrics: dict, step: int) -> None:
            live.append(metrics)
            report.latest[PPO_ITERATION] = step
            log(metrics, step)

        result = train_ppo(
            ctx.start_settings,
            ctx.start_env_config,
            ctx.cached_model_path(ctx.pretrain_key),
            out / "model.pt",
            callback,
            gpu=ctx.learner_gpus,
        )
        (out / "history.json").write_text(json.dumps(result.history))
        meta = {"pretrain_key": ctx.pretrain_key, "env": ctx.start_env_config, "ppo": ctx.start_settings.model_dump()}
        (out / "meta.json").write_text(json.dumps(meta))

    _, hit = PretrainCache(ctx.storage_path).get_or_create(ctx.start_key, build, ctx.workdir, heartbeat(ctx))
    report.latest.pop(PPO_ITERATION, None)
    if not live:
        for row in ctx.artifacts.store.read_json(f"pretrain_cache/{ctx.start_key}/history.json"):
            log(row, int(row["iteration"]))
    if report.run is not None:
        report.run.set_tags({"rayexp.start_key": ctx.start_key, "rayexp.start_cache": "hit" if hit else "miss"})


# ---------------------------------------------------------------------------------------------
# probes


def _probe(ctx: TrialContext, phase: str, model, process) -> None:
    """Probe table, metrics probe/{phase}/{target}/{hook}/{metric} and figures."""
    cfg = ctx.trial.probe
    result = probes.probe_model(
        model,
        ctx.artifacts.random_init(),
        process,
        n_seq=cfg.n_seq,
        seq_len=cfg.seq_len,
        seed=ctx.trial.seed,
        hooks=cfg.hooks,
        test_frac=cfg.test_frac,
        alpha=cfg.alpha,
    )
    ctx.artifacts.put_probe_table(result.table, phase)
    metrics = {}
    for target in dict.fromkeys(result.table.column("target").to_pylist()):
        metrics.update({f"probe/{phase}/{target}/{k}": v for k, v in probes.summarize(result.table, target).items()})
    ctx.report.metrics(metrics, step=0)
    run = ctx.report.run
    if run is None:
        return
    run.log_table(f"probe_{phase}", result.table)
    if not cfg.figures:
        return

    from rayexp import figures  # matplotlib

    hook = probes.CONCAT if ("belief", probes.CONCAT) in result.predictions else model.hook_names[-1]
    if ("belief", hook) in result.predictions:
        true, pred = result.held_out("belief", hook)
        run.log_figure(f"belief_simplex_{phase}", figures.belief_simplex(true, pred, title=f"{phase}: {hook}"))
    first = phase.replace("post", "pre")
    if phase.endswith("post") and first in ctx.artifacts.probe_phases():
        run.log_figure(
            "probe_skill_by_layer" + ("_rl" if phase.startswith("rl") else ""),
            figures.skill_by_layer(
                ctx.artifacts.probe_table(first), result.table, title="probe skill before / after RL"
            ),
        )


def _probe_both(ctx: TrialContext, when: str, model) -> None:
    _probe(ctx, when, model, ctx.process)
    if ctx.env_config["process"] != ctx.trial.process:  # the RL stream differs: probe it too
        _probe(ctx, f"rl_{when}", model, build_process(ctx.env_config["process"]))


def probe_pre(ctx: TrialContext) -> None:
    """Belief probes of the pretrained model, on the pretraining process and the RL stream."""
    _probe_both(ctx, "pre", ctx.artifacts.model_before())


def probe_post(ctx: TrialContext) -> None:
    """The same probes on the post-RL model."""
    _probe_both(ctx, "post", ctx.artifacts.model_after())


# ---------------------------------------------------------------------------------------------
# PPO


def ppo(ctx: TrialContext) -> None:
    """PPO, resumable inside the stage: its state lives in the trial's Tune checkpoint.

    A retried trial resumes after the last saved iteration; replayed iterations' metrics are only
    logged if this MLflow run lacks them, so every PPO metric has one point per iteration. Policy
    checkpoints go to storage every ``ppo.save_every`` iterations, and the final one last.
    """
    from rayexp.ppo import train_ppo  # torch + RLlib

    settings = ctx.ppo_settings
    report = ctx.report
    # one name per quantity, not per task (the task is the run's tag and param): MLflow's chart and
    # compare views overlay runs only under one metric name (until issue 23: ppo/{task}/...)
    prefix = "ppo"
    last = report.run.last_step(f"{prefix}/env_steps") if report.run is not None else None
    logged = [-1 if last is None else last]

    def callback(metrics: dict, step: int) -> None:
        if step <= logged[0]:
            return  # logged by an earlier attempt of this trial
        report.latest[PPO_ITERATION] = step
        report.metrics({f"{prefix}/{k}": v for k, v in metrics.items() if k != "iteration"}, step)
        logged[0] = step

    state_dir = ctx.state.dir / "ppo"
    state_dir.mkdir(exist_ok=True)
    resumed_after = ppo_state.saved_iteration(state_dir)
    if resumed_after is not None and report.run is not None:
        report.run.set_tags({"rayexp.ppo_resumed_after_iteration": resumed_after})
    out = ctx.workdir / "model_after.pt"
    train_ppo(
        settings,
        ctx.env_config,
        ctx.cached_model_path(),
        str(out),
        callback,
        state_dir=state_dir,
        on_checkpoint=lambda iteration: ctx.snapshot(),
        on_policy=lambda n, path: ctx.artifacts.put_policy(path, n),
        gpu=ctx.learner_gpus,
    )
    report.latest.pop(PPO_ITERATION, None)
    ctx.artifacts.put_policy(out, settings.iterations)
    if report.run is not None:
        report.run.log_artifact(out, "weights")
    # the policy is stored; RLlib's resumable state (~10 MB with Adam's moments) would otherwise ride
    # along in every later Tune checkpoint of the trial
    shutil.rmtree(state_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# rollouts and analyses


def rollouts(ctx: TrialContext) -> None:
    """Episodes of the final policy in the RL env, stored for analyses that need them."""
    import tempfile

    import numpy as np

    # the policy acts on the trial's device (rayexp.policy); the envs and the sampling of actions stay on the CPU
    data = collect(ctx.artifacts.model_after(), ctx.env_config, ctx.n_rollouts, seed=ctx.trial.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez_compressed(Path(tmp) / "rollouts.npz", **data)
        ctx.artifacts.put_rollouts(Path(tmp) / "rollouts.npz")
    ctx.report.metrics({"rollouts/reward_per_step": float(data["rewards"].mean())}, step=0)


def analysis_stage(name: str, params: dict[str, Any]) -> Stage:
    spec = registry.get(name, "trial")

    def run(ctx: TrialContext) -> None:
        artifacts = ctx.artifacts if name in DEVICE_READY else ctx.artifacts.on("cpu")
        report = ctx.report

        def progress(done: int, total: int) -> None:  # to Tune only: the progress line and the watchdog's beat
            report.latest.update({ANALYSIS_DONE: done, ANALYSIS_TOTAL: total})
            report.metrics({}, step=0)

        try:
            with reporting_progress(progress):
                result = spec.fn(artifacts, registry.validate_params(name, params))
        finally:
            for key in (ANALYSIS_DONE, ANALYSIS_TOTAL):
                report.latest.pop(key, None)
        metrics = {f"analysis/{name}/{k}": v for k, v in result.metrics.items()}
        ctx.report.metrics(metrics, step=0, once=True)
        run_ = ctx.report.run
        if run_ is not None:
            for tname, table in result.tables.items():
                run_.log_table(tname, table)
            for fname, fig in result.figures.items():
                run_.log_figure(fname, fig)
        if result.arrays:  # before the metrics, whose file marks the stage done
            ctx.artifacts.put_analysis_arrays(name, result.arrays)
        ctx.artifacts.finish_analysis(name, {k: float(v) for k, v in result.metrics.items()})

    return Stage(f"analysis:{name}", run, needs=spec.needs, produces=(f"analyses/{name}",))


PIPELINE = (
    Stage("pretrain", pretrain, needs=(), produces=("model_before", "random_init", "pretrain_checkpoints")),
    Stage("probe_pre", probe_pre, needs=("model_before", "random_init"), produces=("probe_tables",)),
    Stage("ppo", ppo, needs=("model_before", "env"), produces=("ppo_checkpoints", "model_after")),
    Stage("probe_post", probe_post, needs=("model_after", "random_init"), produces=("probe_tables",)),
)
START_FROM = Stage("start_from", start_from, needs=("model_before",), produces=("model_before",))
ROLLOUTS = Stage("rollouts", rollouts, needs=("model_after", "env"), produces=("rollouts",))


def stages_for(trial: ResolvedTrial) -> list[Stage]:
    """The trial's stages in order; each stage's needs are produced by an earlier one."""
    stages = list(PIPELINE)
    if trial.start is not None:
        stages.insert(1, START_FROM)
    if trial.rollouts > 0:
        stages.append(ROLLOUTS)
    stages += [analysis_stage(a.name, a.params) for a in trial.config.analyses]
    made = {"env"}
    for stage in stages:
        missing = [n for n in stage.needs if n not in made]
        if missing:
            raise ValueError(f"stage {stage.name!r} needs {missing}, which no earlier stage produces")
        made.update(stage.produces)
    return stages
