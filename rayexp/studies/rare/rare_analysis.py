"""Rare capabilities over RL (research note 000 §1.5.3): does the agent find the rare factor?

The trial's RL env is the active gated env (``task.env: active_gated``) over gated(A', B, trigger),
paid only for predicting B (``rare_next_token``); the pretraining process sets how often B showed
up before RL (the exposure axis of ``sweeps/rare.yaml``). For the model PPO started from
(iteration 0) and every stored PPO checkpoint:

- ``trigger_rate`` and ``reward``: the share of the policy's actions that emitted the trigger and
  the reward per step, from ``n_episodes`` episodes in the trial's own env (seeded; the same seeds
  for every checkpoint), always on the real reward: a shuffled-reward null's policy is scored on
  what it would earn at the task;
- ``skill_B/{seen,before,at}``: a ridge probe of B's belief from the residual stream (all layers
  concatenated), fitted and scored on held-out sequences of an *evaluation stream* in which A emits
  the trigger often (``eval_eps``), so B's belief has history to read: at every position after B
  first spoke (``seen``), right before a trigger (``before``: is B's state decodable before the
  agent asks?) and at the trigger (``at``: B speaks next). Skill is against the random-init model
  on the same positions (docs/design.md §6 rule 2); ``r2_B/...`` is the held-out R² itself, and
  ``r2_B_random_init/...`` the random-init model's (a negative skill means pretraining left B's
  belief *less* linearly readable than a random network's token-and-position features do).

- ``capability``: whether the model *has* the rare capability, apart from whether it seeks it: on
  the evaluation stream's trigger positions once B has spoken (the probe's ``at`` positions, where
  B's state is knowable), the policy's exact B-prediction accuracy against its exact Bayes ceiling
  and chance, ``(accuracy - chance) / (ceiling - chance)`` (:mod:`.capability`): 0 = a guess among
  B's tokens, 1 = the ceiling. ``capability_greedy`` the same for the policy's argmax, ``b_accuracy``
  the raw expected hit rate; ``b_ceiling`` and ``b_chance`` (model-free) their references.
  "RL found the rare capability" is read from ``capability``, never from the trigger rate; that it
  tracks B, from ``tracking`` (its choice among B's tokens, 0 for any policy blind to B whatever mass it
  puts there) beside ``b_mass`` (the policy's mean mass on B's tokens at the trigger).

Metrics ``{pre,post,max}/{trigger_rate,reward,capability,capability_greedy,b_accuracy,skill_B/...,
r2_B/...}`` and ``delta/{...}`` (post - pre, paired within the trial); table and figure
``rare_curve`` over iterations.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from envs.env_config import real_reward
from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.policy import action_probs, model_device
from rayexp.probes import residual_layers, split_sequences
from rayexp.rollouts import collect
from rayexp.specs import build_process
from rayexp.studies.composition.representation import probe_errors
from rayexp.studies.rare.capability import b_prediction, normalised, tracking
from rayexp.studies.rare.positions import rare_positions, trigger_rate


class RareParams(Params):
    n_episodes: int = Field(200, ge=10, le=100_000, description="episodes per checkpoint in the trial's env")
    n_seq: int = Field(1000, ge=50, le=1_000_000, description="evaluation-stream sequences for the probes")
    eval_eps: float = Field(0.2, gt=0, le=0.5, description="trigger probability per A step in the evaluation stream")
    alpha: float = Field(1e-3, gt=0, description="ridge penalty of the probes (relative to the features' scale)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the episodes, the evaluation stream and its split")


def _eval_stream(env_process: dict, eps: float) -> dict:
    """The RL stream's spec with A's trigger probability set to ``eps``."""
    spec = dict(env_process)
    a = dict(spec["a"])
    if a.get("name") != "rare_token":
        raise ValueError("analysis 'rare' needs a gated RL stream whose factor a is a rare_token process")
    spec["a"] = a | {"eps": eps}
    return spec


@analysis("rare", params=RareParams, needs=("model_before", "random_init", "ppo_checkpoints", "env"))
def rare(artifacts, params: RareParams) -> AnalysisResult:
    """Trigger rate, reward and rare-factor probe skill over PPO checkpoints."""

    env = artifacts.env_config
    if env.get("env") != "active_gated":
        raise ValueError("analysis 'rare' needs task.env: active_gated")
    hmm = build_process(_eval_stream(env["process"], params.eval_eps))
    layout = hmm.layout
    trigger = layout.trigger_token
    b_tokens = np.asarray(layout.factor_tokens[1])
    rng = np.random.default_rng(params.seed)
    tokens, _, beliefs = hmm.sample_with_beliefs(params.n_seq, int(env["context"]), rng)
    b_belief = hmm.factor_beliefs(beliefs)[1]  # (N, L, S_B)
    pos = rare_positions(tokens, trigger, b_tokens)
    train, _ = split_sequences(params.n_seq, 0.5, rng)
    in_train = np.isin(np.arange(params.n_seq), train)

    def features(model) -> np.ndarray:
        import torch

        names = residual_layers(model.hook_names)
        with torch.no_grad():  # on the model's device; the features come back to the CPU for the ridge probes
            x = torch.as_tensor(tokens, dtype=torch.long, device=model_device(model))
            _, cache = model.run_with_cache(x, names=names)
        return torch.cat([cache[n] for n in names], -1).cpu().double().numpy()  # (N, L, D')

    def errors(feats: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, (s, t) in pos.items():
            tr, te = in_train[s], ~in_train[s]
            if tr.sum() < 10 or te.sum() < 10:
                out[name] = np.full(max(int(te.sum()), 1), np.nan)  # too few positions: NaN, not a perfect fit
                continue
            X, Y = feats[s, t], b_belief[s, t]
            out[name] = probe_errors(X[tr], Y[tr], X[te], Y[te], params.alpha)
        return out

    def sst(name: str) -> float:
        """Held-out total sum of squares of B's belief at ``name``'s positions (R²'s denominator)."""
        s, t = pos[name]
        y = b_belief[s, t][~in_train[s]]
        return float(((y - y.mean(0)) ** 2).sum()) if len(y) else float("nan")

    totals = {k: sst(k) for k in pos}
    control = errors(features(artifacts.random_init()))
    action_tokens = np.asarray(env["action_tokens"])
    s_at, t_at = pos["at"]
    next_at = hmm.next_token_probs(beliefs[s_at, t_at])  # (n_at, V) exact: B's token is next

    def capability(model) -> dict[str, float]:
        pi = action_probs(model, tokens, action_tokens)[s_at, t_at]  # (n_at, A)
        b = b_prediction(pi, next_at, action_tokens, b_tokens)
        return {
            "capability": normalised(b["accuracy"], b["ceiling"], b["chance"]),
            "capability_greedy": normalised(b["greedy"], b["ceiling"], b["chance"]),
            "b_accuracy": float(np.mean(b["accuracy"])) if len(b["accuracy"]) else float("nan"),
            "tracking": tracking(b["accuracy"], b["mass"], b["ceiling"], b["chance"]),
            "b_mass": float(np.mean(b["mass"])) if len(b["mass"]) else float("nan"),
        }

    real_env = real_reward(env)  # a null's policy is scored on the pay its shuffle hid: same streams
    rows: dict[str, list] = {"iteration": [], "trigger_rate": [], "reward": []}
    rows |= {k: [] for k in ("capability", "capability_greedy", "b_accuracy", "tracking", "b_mass")}
    rows |= {f"skill_B/{k}": [] for k in pos} | {f"r2_B/{k}": [] for k in pos}
    for it in [0, *artifacts.ppo_iterations()]:
        model = artifacts.policy(it)
        data = collect(model, real_env, params.n_episodes, seed=params.seed)
        rows["iteration"].append(it)
        rows["trigger_rate"].append(trigger_rate(data["actions"], action_tokens, trigger))
        rows["reward"].append(float(data["rewards"].mean()))
        for k, v in capability(model).items():
            rows[k].append(v)
        err = errors(features(model))
        for k in pos:
            c = np.sum(control[k])
            rows[f"skill_B/{k}"].append(float(1 - np.sum(err[k]) / c) if c > 0 else float("nan"))
            rows[f"r2_B/{k}"].append(float(1 - np.sum(err[k]) / totals[k]))
    metrics: dict[str, float] = {f"positions/{k}": float(len(v[0])) for k, v in pos.items()}
    metrics |= {f"r2_B_random_init/{k}": float(1 - np.sum(control[k]) / totals[k]) for k in pos}
    refs = b_prediction(np.zeros((len(s_at), len(action_tokens))), next_at, action_tokens, b_tokens)
    metrics |= {f"b_{k}": float(np.mean(refs[k])) if len(s_at) else float("nan") for k in ("ceiling", "chance")}
    for key, col in rows.items():
        if key == "iteration":
            continue
        metrics[f"pre/{key}"], metrics[f"post/{key}"] = col[0], col[-1]
        metrics[f"delta/{key}"] = col[-1] - col[0]
        metrics[f"max/{key}"] = float(np.nanmax(col))
    return AnalysisResult(metrics=metrics, tables={"rare_curve": pa.table(rows)}, figures={"rare_curve": _figure(rows)})


def _figure(rows):
    from rayexp.figures import plt  # the Agg backend, set once there

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    it = rows["iteration"]
    axes[0].plot(it, rows["trigger_rate"], "o-", label="trigger rate")
    axes[0].plot(it, rows["reward"], "s-", label="reward / step")
    axes[0].plot(it, rows["capability"], "^-", label="B skill at trigger (0 chance, 1 ceiling)")
    axes[0].set_xlabel("PPO iteration")
    axes[0].legend(fontsize=7)
    for k in ("seen", "before", "at"):
        axes[1].plot(it, rows[f"skill_B/{k}"], "o-", label=k)
    axes[1].set_xlabel("PPO iteration")
    axes[1].set_ylabel("probe skill, B's belief")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
