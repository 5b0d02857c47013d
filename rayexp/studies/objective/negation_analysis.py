"""Negating a task vector, then retraining briefly on the first reward (research note 002).

The task started from M_A (``task.start_from``: PPO on R_A) and PPO moved it to M_B on R_B, so
``tau = theta_B - theta_A``. For each lambda this analysis builds ``theta_A - lambda * tau``, retrains it
on R_A for ``iterations`` PPO iterations (the trial's seed and PPO settings), and scores every model
exactly on R_B and R_A (:class:`rayexp.studies.objective.exact_returns.ExactReturns`). ``lambda = 0`` is the
control: M_A itself, retrained the same way. Note 002's hypothesis is that if tau carried the
objective, the negated model would *lean toward minimising R_B* once retraining restores its
capabilities: its R_B return below the control's.

Metrics (``lam{lambda}`` as ``%g``):

- ``return/{M_A,M_B}/{B,A}``: exact expected reward per step of M_A and M_B on R_B and R_A;
- ``lam{l}/raw/{B,A}``: the negated model before retraining; ``lam{l}/retrained/{B,A}`` after;
- ``lam{l}/lean_B`` (and ``/ci_low``, ``/ci_high``): retrained R_B return minus the control's
  (lambda = 0), paired over the evaluation sequences (< 0: leans toward minimising R_B);
- ``lam{l}/lean_A``: the same on R_A (how much capability the negation cost after retraining);
- with ``score_also``, ``lam{l}/lean_{name}`` and the returns for each extra reward too: scored in the
  null task (R_B = R_A, a seed-only update), they say what negating that update does to each R_B, the
  baseline that ``task_vectors`` subtracts (``negation/{task}/lam{l}/beyond_null``). Not matched in size:
  at one lambda a reward's update, longer than the null's on objective.yaml (5.8-8.2 against 4.5),
  moves the weights further (docs/results/objective.md).

The across-seed answer (CIs over seeds, per reward) is in the ``task_vectors`` sweep analysis.
Cost: one PPO run of ``iterations`` per lambda (RLlib build ~3 s plus the iterations).

Devices: every model is scored where the trial's models load (``artifacts.device``); the retraining's
learner takes the trial's learner share (``artifacts.learner_gpus``, 0 on the CPU), as the trial's own
PPO does, and the retrained model loads back to that device.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from envs.env_config import real_reward
from models.config import MAX_SEED, NAME_PATTERN, STRICT
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.policy import model_device
from rayexp.stats import paired_bootstrap_ci
from rayexp.studies.objective import task_vectors as tv
from rayexp.studies.objective.exact_returns import (
    ExactReturns,
    params_of,
    start_reward_spec,
    task_reward_spec,
    with_params,
)


class ScoredReward(BaseModel):
    """One more reward to score every model on; built on the task's stream by ``rayexp validate``."""

    model_config = ConfigDict(**STRICT)

    reward: str = Field(description="a reward of envs.rewards.REWARDS")
    reward_params: dict[str, Any] = Field(default_factory=dict, description="its keyword parameters")


class NegationParams(Params):
    lambdas: list[Annotated[float, Field(ge=-100, le=100)]] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0, 2.0],
        min_length=1,
        description="negation strengths; 0 (the control: M_A retrained) is added when missing",
    )
    iterations: int = Field(5, ge=1, le=1000, description="PPO iterations of the brief retraining on R_A")
    n_seq: int = Field(1000, ge=20, le=1_000_000, description="stream sequences of the exact evaluation")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seeds the evaluation sequences (the same for every trial: paired)"
    )
    score_also: dict[Annotated[str, Field(pattern=NAME_PATTERN)], ScoredReward] = Field(
        default_factory=dict,
        description="more rewards to score every model on, {name: {reward, reward_params}}: the other tasks' "
        "rewards, so the null task's negation gives each R_B's baseline (what negating any update does)",
    )

    def rewards(self) -> dict[str, dict[str, Any]]:
        return {f"score_also.{name}": spec.model_dump() for name, spec in self.score_also.items()}


def lam_name(lam: float) -> str:
    return f"lam{lam:g}"


@analysis("negation", params=NegationParams, needs=("model_before", "model_after", "env"))
def negation(artifacts, params: NegationParams) -> AnalysisResult:
    """theta_A - lambda * tau retrained briefly on R_A: does it lean toward minimising R_B?"""
    from models.checkpoint import load_checkpoint, save_checkpoint
    from rayexp.ppo import train_ppo

    env = artifacts.env_config
    spec_a = start_reward_spec(artifacts.config)
    extra = {name: spec.model_dump() for name, spec in params.score_also.items()}
    ev = ExactReturns(env, {"B": task_reward_spec(env), "A": spec_a} | extra, params.n_seq, params.seed)
    m_a, m_b = artifacts.model_before(), artifacts.model_after()
    theta_a = params_of(m_a)
    tau = tv.task_vector(theta_a, params_of(m_b))
    settings = artifacts.ppo_settings.model_copy(
        update={"iterations": params.iterations, "save_every": 0, "checkpoint_every": 0}
    )
    env_a = real_reward(env) | spec_a  # retrain on R_A itself
    lambdas = sorted(set(params.lambdas) | {0.0})
    device = model_device(m_a)
    gpu = float(getattr(artifacts, "learner_gpus", 0.0))  # the trial's learner share (its TrialContext sets it)

    metrics: dict[str, float] = {}
    for name, model in (("M_A", m_a), ("M_B", m_b)):
        metrics |= {f"return/{name}/{k}": float(v.mean()) for k, v in ev.returns(model).items()}
    rows: dict[str, list] = {"lambda": [], "stage": [], "return_B": [], "return_A": []}
    per_seq: dict[float, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rayexp-negation-") as tmp:
        for lam in lambdas:
            negated = with_params(m_a, tv.apply(theta_a, tau, -lam))
            start = save_checkpoint(Path(tmp) / f"{lam_name(lam)}.pt", negated)
            out = Path(tmp) / f"{lam_name(lam)}_retrained.pt"
            train_ppo(settings, env_a, str(start), str(out), gpu=gpu)
            retrained = load_checkpoint(out, map_location=device)[0]
            for stage, model in (("raw", negated), ("retrained", retrained)):
                r = ev.returns(model)
                metrics |= {f"{lam_name(lam)}/{stage}/{k}": float(v.mean()) for k, v in r.items()}
                rows["lambda"].append(lam)
                rows["stage"].append(stage)
                rows["return_B"].append(float(r["B"].mean()))
                rows["return_A"].append(float(r["A"].mean()))
                if stage == "retrained":
                    per_seq[lam] = r
    control = per_seq[0.0]
    for lam in lambdas:
        for k in ev.values:
            d, lo, hi = paired_bootstrap_ci(control[k], per_seq[lam][k], seed=params.seed)
            metrics |= {
                f"{lam_name(lam)}/lean_{k}": d,
                f"{lam_name(lam)}/lean_{k}/ci_low": lo,
                f"{lam_name(lam)}/lean_{k}/ci_high": hi,
            }
    metrics["tau_norm"] = float(tv.flatten(tau) @ tv.flatten(tau)) ** 0.5
    return AnalysisResult(
        metrics=metrics, tables={"negation": pa.table(rows)}, figures={"negation": _figure(rows, metrics)}
    )


def _figure(rows: dict, metrics: dict):
    import numpy as np

    from rayexp.figures import plt  # the Agg backend, set once there

    lam = np.asarray(rows["lambda"])
    stage = np.asarray(rows["stage"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key, name in zip(axes, ("return_B", "return_A"), ("R_B", "R_A")):
        for s, style in (("raw", "o--"), ("retrained", "o-")):
            sel = stage == s
            ax.plot(lam[sel], np.asarray(rows[key])[sel], style, label=s)
        ax.axhline(metrics[f"return/M_A/{name[-1]}"], color="grey", lw=1, label="M_A")
        ax.axhline(metrics[f"return/M_B/{name[-1]}"], color="k", lw=1, ls=":", label="M_B")
        ax.set_xlabel("lambda (theta_A - lambda tau)")
        ax.set_ylabel(f"exact return on {name}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
