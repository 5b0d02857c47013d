"""Exact returns of transformers under several rewards on one fixed sample of a stream (adapter).

Shared by the ``negation`` and ``task_vectors`` analyses: one seeded sample of the RL stream with
exact beliefs, each reward's exact action values on it (:mod:`rayexp.studies.objective.returns`), and a
model's policy at every step from one causal pass (the observation at step t is the prefix
x_0..x_t when ``episode_len == context``, as in :mod:`rayexp.studies.composition.composition_analysis`). Every model is
scored on the same contexts, so differences between models are paired per sequence.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from envs.rewards import make_reward
from rayexp.policy import action_probs, model_device
from rayexp.specs import build_process
from rayexp.studies.objective import returns


def reward_of(env: dict[str, Any]):
    """The env config's reward, built on its stream."""

    return make_reward(env["reward"], build_process(env["process"]), env.get("reward_params"), env.get("action_tokens"))


class ExactReturns:
    """``returns(model) -> {reward name: per-sequence expected return (N,)}`` on one stream sample."""

    def __init__(self, env: dict[str, Any], rewards: dict[str, dict[str, Any]], n_seq: int, seed: int):

        self.hmm = build_process(env["process"])
        self.rewards = {name: reward_of(env | spec) for name, spec in rewards.items()}
        acts = {tuple(r.action_tokens.tolist()) for r in self.rewards.values()}
        if len(acts) != 1:
            raise ValueError(f"rewards act on different token sets {sorted(acts)}; a policy head has one")
        self.action_tokens = np.asarray(acts.pop())
        look = max(r.lookahead for r in self.rewards.values())
        self.steps = int(env.get("episode_len") or env["context"])
        if self.steps != int(env["context"]):
            # one causal pass scores step t at position t only while every observation is a prefix
            raise ValueError(f"exact returns need episode_len == context; got {self.steps} and {env['context']}")
        tokens, _, beliefs = self.hmm.sample_with_beliefs(n_seq, self.steps + look, np.random.default_rng(seed))
        self.tokens = tokens
        self.values = {
            name: returns.action_values(self.hmm, r, tokens, beliefs)[:, : self.steps]
            for name, r in self.rewards.items()
        }

    def probs(self, model) -> np.ndarray:
        """(N, steps, A) the policy at every step."""
        return action_probs(model, self.tokens[:, : self.steps], self.action_tokens)

    def returns(self, model) -> dict[str, np.ndarray]:
        p = self.probs(model)
        return {name: returns.expected_return(p, v) for name, v in self.values.items()}

    def optimum(self) -> dict[str, float]:
        return {name: float(returns.optimal_return(v).mean()) for name, v in self.values.items()}


def params_of(model) -> dict[str, np.ndarray]:
    return {k: v.detach().double().cpu().numpy() for k, v in model.state_dict().items()}


def with_params(model, params: dict[str, np.ndarray]):
    """A copy of ``model`` holding ``params``, on ``model``'s device."""
    import torch

    out = copy.deepcopy(model)
    device = model_device(model)
    out.load_state_dict({k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in params.items()})
    return out.eval()


def task_reward_spec(env: dict[str, Any]) -> dict[str, Any]:
    return {"reward": env["reward"], "reward_params": dict(env.get("reward_params") or {})}


def start_reward_spec(config: dict[str, Any]) -> dict[str, Any]:
    """M_A's reward (``task.start_from``) of a trial config; ValueError when the task has none."""
    start = config["task"].get("start_from")
    if not start:
        raise ValueError("this analysis needs a task with start_from (M_A), the model its PPO started from")
    return {"reward": start["reward"], "reward_params": dict(start.get("reward_params") or {})}
