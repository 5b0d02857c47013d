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
  moves the weights further (docs/results/objective.md); the sweep analysis ``matched_negation``
  (:mod:`.matched_negation_analysis`) negates the null's update scaled to each reward's norm, with
  :class:`Retraining`, :func:`evaluator` and :func:`negated_returns` from here.

The across-seed answer (CIs over seeds, per reward) is in the ``task_vectors`` sweep analysis.
Cost: one PPO run of ``iterations`` per lambda (RLlib build ~3 s plus the iterations).

Devices: every model is scored where the trial's models load (``artifacts.device``); the retraining's
learner takes the trial's learner share (``artifacts.learner_gpus``, 0 on the CPU), as the trial's own
PPO does, and the retrained model loads back to that device.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from envs.env_config import real_reward
from models.config import MAX_SEED, NAME_PATTERN, STRICT
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.policy import model_device
from rayexp.ppo_settings import PPOSettings
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


@dataclass(frozen=True)
class Retraining:
    """A trial's brief PPO retraining on R_A: its seed and PPO settings, ``iterations`` long, on its
    env paying R_A, with its learner share (``artifacts.learner_gpus``, 0 on the CPU)."""

    settings: PPOSettings
    env: dict[str, Any]
    gpu: float

    @classmethod
    def of(cls, artifacts, iterations: int) -> Retraining:
        settings = artifacts.ppo_settings.model_copy(
            update={"iterations": iterations, "save_every": 0, "checkpoint_every": 0}
        )
        env_a = real_reward(artifacts.env_config) | start_reward_spec(artifacts.config)  # retrain on R_A itself
        return cls(settings, env_a, float(getattr(artifacts, "learner_gpus", 0.0)))

    def __call__(self, model, tmp: Path, name: str):
        """``model`` retrained (checkpoints ``{name}.pt`` and ``{name}_retrained.pt`` in ``tmp``), loaded
        back to ``model``'s device."""
        from models.checkpoint import load_checkpoint, save_checkpoint
        from rayexp.ppo import train_ppo

        start = save_checkpoint(tmp / f"{name}.pt", model)
        out = tmp / f"{name}_retrained.pt"
        train_ppo(self.settings, self.env, str(start), str(out), gpu=self.gpu)
        return load_checkpoint(out, map_location=model_device(model))[0]


def evaluator(artifacts, params: NegationParams) -> ExactReturns:
    """The exact scoring of a trial's negation: R_B (its task's reward), R_A and ``score_also``."""
    env = artifacts.env_config
    extra = {name: spec.model_dump() for name, spec in params.score_also.items()}
    specs = {"B": task_reward_spec(env), "A": start_reward_spec(artifacts.config)} | extra
    return ExactReturns(env, specs, params.n_seq, params.seed)


def negated_returns(m_a, tau: tv.Params, lambdas, retrain: Retraining, ev: ExactReturns, tmp: Path) -> dict:
    """``{lambda: {"raw": returns, "retrained": returns}}`` of ``theta_A - lambda * tau`` before and after
    ``retrain``, each ``{reward name: per-sequence exact return (n_seq,)}``."""
    theta_a = params_of(m_a)
    out = {}
    for lam in lambdas:
        negated = with_params(m_a, tv.apply(theta_a, tau, -lam))
        retrained = retrain(negated, tmp, lam_name(lam))
        out[lam] = {"raw": ev.returns(negated), "retrained": ev.returns(retrained)}
    return out


@analysis("negation", params=NegationParams, needs=("model_before", "model_after", "env"))
def negation(artifacts, params: NegationParams) -> AnalysisResult:
    """theta_A - lambda * tau retrained briefly on R_A: does it lean toward minimising R_B?"""
    ev = evaluator(artifacts, params)
    m_a, m_b = artifacts.model_before(), artifacts.model_after()
    tau = tv.task_vector(params_of(m_a), params_of(m_b))
    lambdas = sorted(set(params.lambdas) | {0.0})

    metrics: dict[str, float] = {}
    for name, model in (("M_A", m_a), ("M_B", m_b)):
        metrics |= {f"return/{name}/{k}": float(v.mean()) for k, v in ev.returns(model).items()}
    with tempfile.TemporaryDirectory(prefix="rayexp-negation-") as tmp:
        got = negated_returns(m_a, tau, lambdas, Retraining.of(artifacts, params.iterations), ev, Path(tmp))
    rows: dict[str, list] = {"lambda": [], "stage": [], "return_B": [], "return_A": []}
    for lam in lambdas:
        for stage, r in got[lam].items():
            metrics |= {f"{lam_name(lam)}/{stage}/{k}": float(v.mean()) for k, v in r.items()}
            rows["lambda"].append(lam)
            rows["stage"].append(stage)
            rows["return_B"].append(float(r["B"].mean()))
            rows["return_A"].append(float(r["A"].mean()))
    control = got[0.0]["retrained"]
    for lam in lambdas:
        for k in ev.values:
            d, lo, hi = paired_bootstrap_ci(control[k], got[lam]["retrained"][k], seed=params.seed)
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
