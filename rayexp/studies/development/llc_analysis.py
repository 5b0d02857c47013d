"""The local learning coefficient over training: pretraining checkpoints and RL checkpoints.

docs/design.md §5 ("Development"). One loss and one SGLD setting for every checkpoint of every trial,
so an estimate is a property of the weights (issue 22):

- loss: the self-KL on the pretraining stream (rayexp.studies.development.losses says why): ``n_seq``
  sequences of the trial's pretraining process, sampled from ``seed``, the same for every trial that
  shares the process; the task (reward, action tokens, rollouts) does not enter;
- SGLD: the study's setting (rayexp.studies.development.llc.STUDY_SGLD are the defaults; the sweep
  file states them), the same for every checkpoint, never calibrated per trial.

Every estimate has 4+ chains after a burn-in and the R-hat of their excess-loss traces; one above
``rhat_max`` is *unsettled*, one with a draw past the ceiling (a KL above log V) *diverged*; its row
says so (``settled``, ``diverged``, ``healthy`` = settled and neither diverged nor below init), the
figure draws it hollow, the ``*/unsettled`` and ``*/unhealthy`` metrics count them, and transitions
are located on healthy estimates only (:mod:`.transitions`, at ``transition_alpha``: a curve without a
transition is marked with that probability). R-hat works on ranks, so it shrugs off a few spikes; the
ceiling is what catches them (on the quickstart's negative control after 40 PPO iterations, 6 of
4000 draws went past log 6 nats and would have added ~8 % to the estimate).
Identical weights (RL iteration 0 is the pretrained model) are estimated once and reused.
``pretraining: false`` skips the pretraining checkpoints (no ``pretrain/*`` metrics, no ``llc_pretrain``
table): an arm added to a study whose other arms of the same seeds estimated them (sweeps/development_null.yaml).

Logged: metrics ``{pretrain,rl}/final`` (and ``_std``, ``_rhat``, ``_settled``, ``_healthy``),
``{phase}/unsettled``, ``{phase}/unhealthy``, ``rl/{start,start_healthy,last,last_iteration,growth,
healthy,estimates,reward_start,reward_final}`` (:func:`.growth.rl_growth`: how far RL moved the LLC),
``{phase}/transitions_{llc,loss|reward}`` (NaN where the curve had too few points to test) and
``{phase}/transitions_{curve}_tested``, ``sgld/{lr,localization,nbeta,rms_delta,num_chains,num_burnin,
num_draws}``, ``seconds_per_estimate``; tables ``llc_pretrain`` (step, llc_mean, llc_std,
rhat, settled, diverged, below_init, healthy, loss), ``llc_rl`` (iteration, ..., reward), ``llc_chains``
(every draw of every chain) and ``llc_transitions``; figure ``llc_over_training``.

Cost: num_chains * (num_burnin + num_draws) SGLD steps per distinct checkpoint, one forward and
backward pass of a batch each.

Devices: every checkpoint is estimated where it loads (``artifacts.device``): the loss data are moved
there once per device, the chains run there (their noise drawn on the CPU, the same on every device:
rayexp.studies.development.sgld), and only losses come back.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis, progress
from rayexp.rollouts import collect
from rayexp.studies.development import losses
from rayexp.studies.development.convergence import RHAT_MAX
from rayexp.studies.development.growth import rl_growth
from rayexp.studies.development.llc import (
    STUDY_SGLD,
    LLCResult,
    SGLDSettings,
    diagnose,
    estimate_llc,
)
from rayexp.studies.development.llc_figure import llc_figure
from rayexp.studies.development.transitions import ALPHA, phase_tested, phase_transitions, refuse_transition_k

TRANSITIONS = pa.schema([("phase", pa.string()), ("curve", pa.string()), ("checkpoint", pa.int64())])

S = STUDY_SGLD


class LLCParams(Params):
    lr: float = Field(S.lr, gt=0, le=1, description="SGLD step size eps (the study's one setting)")
    localization: float = Field(S.localization, ge=0, le=1e6, description="gamma: the pull back to the checkpoint")
    nbeta: float = Field(S.nbeta, gt=0, le=1e9, description="inverse temperature n*beta (fixed, not derived per trial)")
    preconditioner: Literal["rmsprop", "identity"] = Field(
        S.preconditioner, description="RMSprop: adapted during the burn-in, frozen for the draws"
    )
    rms_alpha: float = Field(S.rms_alpha, gt=0, lt=1, description="decay of the preconditioner's mean of grad^2")
    rms_delta: float = Field(
        S.rms_delta, gt=0, le=1, description="added to sqrt(V): the preconditioner is at most 1/delta"
    )
    num_chains: int = Field(S.num_chains, ge=4, le=64, description="SGLD chains per estimate (R-hat needs several)")
    num_burnin: int = Field(S.num_burnin, ge=1, le=100_000, description="SGLD steps before the first draw")
    num_draws: int = Field(S.num_draws, ge=8, le=100_000, description="draws per chain (one SGLD step each)")
    rhat_max: float = Field(
        RHAT_MAX, gt=1, le=10, description="an estimate whose chains' R-hat exceeds this is unsettled"
    )
    batch_size: int = Field(32, ge=1, le=65536, description="sequences per SGLD step")
    n_seq: int = Field(1024, ge=1, le=1_000_000, description="pretraining-stream sequences in the loss's data")
    reward_episodes: int = Field(64, ge=0, le=100_000, description="fresh episodes per RL checkpoint for its reward")
    transition_alpha: float = Field(
        ALPHA,
        gt=0,
        le=0.5,
        description="the chance of marking a transition on a curve without one (a line plus noise); "
        "the rule's threshold is calibrated to it (rayexp/studies/development/transitions.py)",
    )
    _k_is_gone = model_validator(mode="before")(refuse_transition_k)
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of the sequences, the SGLD chains and the reward episodes"
    )
    pretraining: bool = Field(
        True,
        description="estimate the pretraining checkpoints too; false: PPO's only (iteration 0 is the pretrained "
        "model), for an arm added to a sweep whose other arms of the same seeds estimated them already",
    )

    def sgld(self) -> SGLDSettings:
        return SGLDSettings.from_params(self)


def weights_key(model) -> str:
    """sha256 of every parameter's bytes: equal keys, equal weights, so one estimate serves both."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Estimator:
    """One fixed loss data set and SGLD setting for every checkpoint handed to it."""

    def __init__(self, process, n_ctx: int, params: LLCParams):
        self.params, self.settings = params, params.sgld()
        # n_ctx + 1 tokens: the self-KL reads the first n_ctx, the next-token loss all of them
        self.sequences = losses.stream_batches(process, params.n_seq, n_ctx + 1, params.batch_size, params.seed)
        self._on_device: dict[str, list] = {"cpu": self.sequences}  # the same batches, moved once per device
        self.ceiling = math.log(process.vocab_size)  # a KL beyond the uniform guess's: the chain left the model
        self.seconds: list[float] = []
        self.chains: list[dict] = []
        self._done: dict[str, LLCResult] = {}

    def batches(self, model) -> list:
        """The loss data on ``model``'s device."""
        device = next(model.parameters()).device
        if str(device) not in self._on_device:
            self._on_device[str(device)] = [b.to(device) for b in self.sequences]
        return self._on_device[str(device)]

    def loss(self, model) -> float:
        """Next-token cross-entropy on the evaluation sequences (the pretraining curve)."""
        import torch

        with torch.no_grad():
            return float(np.mean([float(losses.next_token_loss(model, b)) for b in self.batches(model)]))

    def estimate(self, model, phase: str, checkpoint: int) -> dict:
        import torch

        key = weights_key(model)
        if key not in self._done:
            t0 = time.perf_counter()
            batches = losses.self_kl_batches(model, [b[:, :-1] for b in self.batches(model)])
            with torch.enable_grad():  # SGLD needs gradients whatever the caller's mode
                self._done[key] = estimate_llc(model, losses.self_kl, batches, self.settings)
            self.seconds.append(time.perf_counter() - t0)
        res = self._done[key]
        self._log_chains(phase, checkpoint, res)
        dg = diagnose(res, ceiling=self.ceiling, rhat_max=self.params.rhat_max)
        keys = ("llc_mean", "llc_std", "rhat", "settled", "diverged", "below_init", "healthy")
        return {"checkpoint": checkpoint, **{k: dg[k] for k in keys}}

    def _log_chains(self, phase: str, checkpoint: int, res: LLCResult) -> None:
        c, d = res.loss_traces.shape
        self.chains.append(
            {
                "phase": [phase] * (c * d),
                "checkpoint": [checkpoint] * (c * d),
                "chain": np.repeat(np.arange(c), d).tolist(),
                "draw": np.tile(np.arange(d), c).tolist(),
                "loss": res.loss_traces.ravel().tolist(),
                "excess": res.excess_traces.ravel().tolist(),
            }
        )


def _reward(model, env_config: dict, n: int, seed: int) -> float:
    return float(collect(model, env_config, n, seed=seed)["rewards"].mean()) if n else math.nan


def _table(rows: list[dict], checkpoint: str) -> pa.Table:
    """Rows with ``checkpoint`` renamed (step, iteration), first."""
    return pa.Table.from_pylist(
        [{checkpoint: r["checkpoint"], **{k: r[k] for k in r if k != "checkpoint"}} for r in rows]
    )


def _phase_metrics(name: str, rows: list[dict]) -> dict[str, float]:
    final = rows[-1]
    return {
        f"{name}/final": final["llc_mean"],
        f"{name}/final_std": final["llc_std"],
        f"{name}/final_rhat": final["rhat"],
        f"{name}/final_settled": float(final["settled"]),
        f"{name}/final_healthy": float(final["healthy"]),
        f"{name}/unsettled": float(sum(not r["settled"] for r in rows)),
        f"{name}/unhealthy": float(sum(not r["healthy"] for r in rows)),
    }


def transition_metrics(marks: dict[str, dict[str, list[int]]], tested: dict[str, dict[str, bool]]) -> dict[str, float]:
    """``{phase}/transitions_{curve}``: the count, NaN where the curve had too few points to test (its
    empty list is not "no transition"); ``{phase}/transitions_{curve}_tested``: 1.0 or 0.0."""
    out = {}
    for phase, curves in marks.items():
        for curve, where in curves.items():
            ok = tested[phase][curve]
            out[f"{phase}/transitions_{curve}"] = float(len(where)) if ok else math.nan
            out[f"{phase}/transitions_{curve}_tested"] = float(ok)
    return out


@analysis("llc", params=LLCParams, needs=("pretrain_checkpoints", "ppo_checkpoints", "env"))
def llc(artifacts, params: LLCParams) -> AnalysisResult:
    """LLC (SGLD, self-KL on the pretraining stream, one setting for the study) of pretraining and RL checkpoints."""
    steps = artifacts.pretrain_steps()
    if not steps:
        raise FileNotFoundError(f"{artifacts}: no pretraining checkpoints (artifacts.pretrain_checkpoints: 0?)")
    first = artifacts.pretrain_checkpoint(steps[0])
    est = Estimator(artifacts.process(), first.cfg.n_ctx, params)
    iterations = [0, *artifacts.ppo_iterations()]
    total = (len(steps) if params.pretraining else 0) + len(iterations)  # ~90 s each on one core: say where it is
    pretrain = []
    for step in steps if params.pretraining else []:
        model = first if step == steps[0] else artifacts.pretrain_checkpoint(step)
        pretrain.append({**est.estimate(model, "pretrain", step), "loss": est.loss(model)})
        progress(len(pretrain), total)
    rl = []
    for it in iterations:
        model = artifacts.policy(it)
        reward = _reward(model, artifacts.env_config, params.reward_episodes, params.seed)  # same seeds each time
        rl.append({**est.estimate(model, "rl", it), "reward": reward})
        progress(len(pretrain) + len(rl), total)

    metrics = {**(_phase_metrics("pretrain", pretrain) if pretrain else {}), **_phase_metrics("rl", rl)}
    rl_table = _table(rl, "iteration")  # the table the report reads, so metric and report share one input
    metrics.update({f"rl/{k}": v for k, v in rl_growth(rl_table.to_pydict()).items()})
    phases = {"pretrain": pretrain, "rl": rl} if pretrain else {"rl": rl}
    marks = phase_transitions(phases, params.transition_alpha)
    found = [
        {"phase": phase, "curve": curve, "checkpoint": at}
        for phase, curves in marks.items()
        for curve, where in curves.items()
        for at in where
    ]
    metrics.update(transition_metrics(marks, phase_tested(phases)))
    for k in ("lr", "localization", "nbeta", "rms_delta", "num_chains", "num_burnin", "num_draws"):
        metrics[f"sgld/{k}"] = float(getattr(est.settings, k))
    metrics["seconds_per_estimate"] = float(np.mean(est.seconds))
    tables = {
        **({"llc_pretrain": _table(pretrain, "step")} if pretrain else {}),
        "llc_rl": rl_table,
        "llc_chains": pa.concat_tables([pa.table(c) for c in est.chains]),
        "llc_transitions": pa.Table.from_pylist(found, schema=TRANSITIONS),
    }
    fig = llc_figure(pretrain, rl, marks, params.rhat_max)
    return AnalysisResult(metrics=metrics, tables=tables, figures={"llc_over_training": fig})
