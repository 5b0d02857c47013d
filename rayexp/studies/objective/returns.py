"""Exact expected returns of any policy under any of several rewards on one stream (numpy only, pure).

A model trained on one reward (``next_token``) and copies trained on others (``payoff`` matrices,
``reward_punish``, ...) act on the SAME stream with the same action set; to compare them we need,
for every reward, the exact expected reward of every action at every context, from exact beliefs
rather than sampled rewards. The stream never depends on the actions, so the expected return of a
policy is the mean over steps of ``sum_k pi(k | context) Q(context, k)``.

Step and belief convention (that of :meth:`envs.process.HMM.sample_with_beliefs`, of
:meth:`envs.process.HMM.beliefs`, of the env's ``info["belief"]`` and of
``rayexp.studies.composition.stream_setup.make_setup``): for tokens ``x_0..x_{L-1}``, ``beliefs[:, t]`` is the
belief *after* ``x_t``, P(state | x_0..x_t). The action at step t is taken after seeing x_0..x_t (what
a causal model reads at position t), so its value is a function of ``beliefs[:, t]`` and
``tokens[:, :t+1]``. Steps ``t = 0..L'-1`` are scored, with ``L' = L - reward.lookahead``: the steps
that have their target inside the sequence, exactly the steps :class:`envs.gym_env.SequenceEnv`
scores when it samples ``episode_len + lookahead`` tokens (env step t is index t here). Every
next-token-style reward (``next_token``, ``rare_next_token``, ``payoff`` with either offset,
``reward_punish``) has lookahead 1, so all of them are scored on the same contexts t = 0..L-2; an
echo payoff (offset 0) could score t = L-1 too, but it is left out so that the value arrays of
different rewards line up context by context. ``joint_target`` looks further ahead (L' smaller):
truncate the other rewards' arrays to its L' to compare them.

Values: ``Q[n, t, k] = E[reward(action_tokens[k]) | x_0..x_t]``:

- ``next_token``: ``P(x_{t+1} = action_tokens[k])`` = ``hmm.next_token_probs(beliefs[:, t])`` there;
- ``payoff`` offset 1: ``sum_v matrix[k, v] P(x_{t+1} = v)``; offset 0: ``matrix[k, x_t]`` (known);
- ``rare_next_token``: ``P(x_{t+1} = a_k)`` times what a correct claim of ``a_k`` pays;
- ``joint_target`` and ``implies`` (default, not ``every_step``):
  :func:`rayexp.exact.targets.target_probs`;
- ``reward_punish``: the action's value (+1 / -1 / 0), the same at every context.

Any other reward raises :class:`UnsupportedReward`.
"""

from __future__ import annotations

import numpy as np

from envs.process import HMM
from envs.rewards import Implies, JointTarget, NextToken, Payoff, RareNextToken, Reward, RewardPunish
from rayexp.exact import ceilings, targets

SUPPORTED_REWARDS = ("next_token", "payoff", "rare_next_token", "reward_punish", "joint_target", "implies")


class UnsupportedReward(ValueError):
    """No exact action-value function for this reward."""


def action_values(hmm: HMM, reward: Reward, tokens: np.ndarray, beliefs: np.ndarray) -> np.ndarray:
    """Exact ``E[reward | x_0..x_t, action k]`` (N, L', A), ``L' = L - reward.lookahead``.

    ``tokens`` (N, L) and ``beliefs`` (N, L, S) as :meth:`HMM.sample_with_beliefs` returns them
    (``beliefs[:, t]`` = P(state | x_0..x_t)); action k is ``reward.action_tokens[k]``. See the module
    docstring for the steps scored and each reward's formula.
    """
    tokens = np.asarray(tokens)
    beliefs = np.asarray(beliefs, dtype=np.float64)
    if tokens.ndim != 2 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
        raise ValueError(f"tokens must be an (N, L) integer array; got shape {tokens.shape}, dtype {tokens.dtype}")
    N, L = tokens.shape
    if beliefs.shape != (N, L, hmm.n_states):
        raise ValueError(f"beliefs must have shape (N, L, S) = {(N, L, hmm.n_states)}; got {beliefs.shape}")
    n = L - reward.lookahead
    if n < 1:
        raise ValueError(f"reward {reward.name!r} needs sequences longer than its lookahead {reward.lookahead}; L={L}")
    acts = reward.action_tokens
    kind = type(reward)
    if kind is Payoff:
        if reward.offset == 0:
            return reward.matrix.T[tokens[:, :n]]  # (N, n, A): row x_t of matrix.T = matrix[:, x_t]
        return hmm.next_token_probs(beliefs[:, :n]) @ reward.matrix.T  # (N, n, V) @ (V, A)
    if kind is NextToken:
        return hmm.next_token_probs(beliefs[:, :n])[..., acts]  # (N, n, A)
    if kind is RareNextToken:
        pay = reward.rewards(acts, acts)  # (A,) what a correct claim of a_k pays
        return hmm.next_token_probs(beliefs[:, :n])[..., acts] * pay
    if kind is RewardPunish:
        value = reward.rewards(acts, np.full(len(acts), -1))  # (A,) depends on the action only
        return np.broadcast_to(value, (N, n, len(acts))).copy()
    if kind is JointTarget or (kind is Implies and not reward.params["every_step"]):
        return targets.target_probs(hmm, reward, beliefs[:, :n], tokens[:, :n])  # (N, n, A)
    raise UnsupportedReward(
        f"exact action values are available for the rewards {list(SUPPORTED_REWARDS)} "
        f"('implies' without every_step); reward {reward.name!r} is unsupported"
    )


def _check_pair(a: np.ndarray, values: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, values = np.asarray(a, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if values.ndim != 3 or a.shape != values.shape:
        raise ValueError(f"{what} and values must both have shape (N, L', A); got {a.shape} and {values.shape}")
    return a, values


def expected_return(policy_probs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Exact mean reward per step (N,) of the stochastic policy ``policy_probs`` (N, L', A) (rows: a
    distribution over the action set) under action values ``values`` (N, L', A)."""
    pi, values = _check_pair(policy_probs, values, "policy_probs")
    return ceilings.expected_reward(pi, values).mean(axis=-1)


def greedy_return(scores: np.ndarray, values: np.ndarray, tol: float = ceilings.TIE_TOL) -> np.ndarray:
    """Mean reward per step (N,) of acting on ``argmax scores`` (N, L', A) (probabilities or logits);
    actions within ``tol`` of the best share the reward equally."""
    scores, values = _check_pair(scores, values, "scores")
    return ceilings.greedy_reward(scores, values, tol).mean(axis=-1)


def optimal_return(values: np.ndarray) -> np.ndarray:
    """The most any policy seeing the context can earn, mean per step (N,): ``max_k values`` averaged."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"values must have shape (N, L', A); got {values.shape}")
    return ceilings.optimum(values).mean(axis=-1)


def reward_similarity(values_list: list[np.ndarray], per_context: bool = False) -> np.ndarray:
    """(k, k) Pearson correlation of k rewards' action values over all (context, action) pairs.

    Each (N, L', A) array (same shape for all; all on the same contexts) is flattened and centred on
    its mean: 1 = the same reward up to a positive affine map, -1 = negated (R and -R), near 0 =
    unrelated. ``per_context=True`` instead centres each context's A values on their mean over the
    actions, so rewards that differ by a function of the context only (which changes no policy's
    ranking here, since the stream ignores the actions) correlate 1. NaN for a reward whose
    centred values are all zero (a constant reward), whose correlation is undefined.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in values_list]
    if not arrays:
        raise ValueError("reward_similarity needs at least one values array")
    shape = arrays[0].shape
    if len(shape) != 3 or any(a.shape != shape for a in arrays):
        raise ValueError(f"values must all have one shape (N, L', A); got {[a.shape for a in arrays]}")
    if per_context:
        Z = np.stack([(a - a.mean(axis=-1, keepdims=True)).ravel() for a in arrays])  # (k, N*L'*A)
    else:
        Z = np.stack([a.ravel() - a.mean() for a in arrays])
    norm = np.sqrt(np.einsum("ij,ij->i", Z, Z))  # (k,)
    # a constant reward leaves only round-off after centring: call that zero, not a direction
    size = np.array([np.sqrt(a.size) * max(float(np.abs(a).max(initial=0.0)), 1.0) for a in arrays])
    ok = norm > 1e-12 * size  # (k,)
    safe = np.where(ok, norm, 1.0)
    C = (Z @ Z.T) / np.outer(safe, safe)
    C[~(ok[:, None] & ok[None, :])] = np.nan
    return np.clip(C, -1.0, 1.0)
