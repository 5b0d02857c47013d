"""Reward of a policy against exact ceilings, and the composition margin.

Inputs are exact target distributions ``P`` (..., A) = P(target = action k | context) (see
:mod:`.targets`) and policies ``pi`` (..., A); every function returns per-context values (...,) so
callers average per sequence and bootstrap over sequences.

- expected reward ``sum_a pi(a) P(a)``: what the stochastic policy earns per step, exactly;
- greedy reward ``P(argmax pi)``: what acting on its mode earns; ties share the reward equally,
  so a policy with no preference (a single-factor observer facing a uniform target) scores the
  mean of P, exactly, not whatever the first index happens to earn;
- Bayes optimum ``max_k P(k)``: no policy seeing this context earns more;
- uniform ``mean_k P(k)``;
- best single factor: :func:`greedy_reward` of the single-factor prediction against the true P;
- last-k-tokens lookup: a table from the last k tokens to the action with the largest mean P,
  fitted on training sequences and scored on held-out ones (so it is not optimistic);
- best per-phase single factor: at each position the better factor's observer (:func:`per_phase_single`);
- composition margin ``(R - R_single) / (R_opt - R_single)``: 0 = as good as the best policy that
  reads one factor, 1 = Bayes-optimal; NaN where the two ceilings coincide (the task does not
  need two factors, so the margin cannot say anything).
"""

from __future__ import annotations

import numpy as np

#: scores within this of the best count as tied (policies from float32 logits)
TIE_TOL = 1e-9
#: ceilings closer than this leave the margin undefined
MARGIN_EPS = 1e-6


def expected_reward(pi: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Exact expected reward per context (...,) of policy ``pi`` (..., A) under targets ``P`` (..., A)."""
    return np.sum(np.asarray(pi, dtype=np.float64) * P, axis=-1)


def greedy_reward(scores: np.ndarray, P: np.ndarray, tol: float = TIE_TOL) -> np.ndarray:
    """Reward per context (...,) of acting on ``argmax scores`` (..., A), ties sharing the reward."""
    scores = np.asarray(scores, dtype=np.float64)
    best = scores >= scores.max(axis=-1, keepdims=True) - tol  # (..., A)
    return np.sum(np.where(best, P, 0.0), axis=-1) / best.sum(axis=-1)


def optimum(P: np.ndarray) -> np.ndarray:
    """Bayes-optimal reward per context (...,): ``max_k P(k)``."""
    return np.max(P, axis=-1)


def uniform(P: np.ndarray) -> np.ndarray:
    """Reward per context (...,) of the uniform policy."""
    return np.mean(P, axis=-1)


def lookup_keys(tokens: np.ndarray, k: int, pad: int) -> np.ndarray:
    """(N, L) tokens -> (N, L, k): at each position the last k tokens, ``pad`` before the start."""
    N, L = tokens.shape
    padded = np.concatenate([np.full((N, k), pad, dtype=np.int64), np.asarray(tokens, dtype=np.int64)], axis=1)
    return np.stack([padded[:, j + 1 : j + 1 + L] for j in range(k)], axis=-1)  # (N, L, k)


def lookup_actions(keys: np.ndarray, P: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(N, L) the action the lookup table fitted on ``train`` sequences takes at every context.

    ``keys`` (N, L, k) from :func:`lookup_keys`, ``P`` (N, L, A). The table maps each key seen in
    training to the action with the largest summed P there (the expected-reward maximiser for that
    key); keys never seen in training get the action that is best on average.
    """
    A = P.shape[-1]
    rows = keys.reshape(-1, keys.shape[-1])  # (N*L, k)
    _, inv = np.unique(rows, axis=0, return_inverse=True)
    inv = inv.reshape(keys.shape[:2])  # (N, L) key id
    n_keys = int(inv.max()) + 1
    sums = np.zeros((n_keys, A))
    np.add.at(sums, inv[train].ravel(), P[train].reshape(-1, A))
    seen = np.zeros(n_keys, dtype=bool)
    seen[inv[train].ravel()] = True
    fallback = int(P[train].reshape(-1, A).sum(axis=0).argmax())
    table = np.where(seen, sums.argmax(axis=1), fallback)  # (n_keys,)
    return table[inv]


def lookup_reward(keys: np.ndarray, P: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Held-out reward (n_test, L) of the lookup table fitted on ``train`` sequences (:func:`lookup_actions`)."""
    action = lookup_actions(keys, P, train)[test]  # (n_test, L)
    return np.take_along_axis(P[test], action[..., None], axis=-1)[..., 0]


def per_phase_single(singles: list[np.ndarray], P: np.ndarray) -> np.ndarray:
    """Greedy reward per context (N, L) of the best *per-phase* single-factor policy: at each
    position, the one factor's observer that earns most there (over all sequences). It is at least
    the best single factor, and on an interleave, where the factors take turns, it can be much more:
    the margin against it asks for dependence on both factors at one step, not merely taking turns."""
    rewards = np.stack([greedy_reward(Pi, P) for Pi in singles])  # (F, N, L)
    best = rewards.mean(axis=1).argmax(axis=0)  # (L,) the best factor at each position
    return np.take_along_axis(rewards, best[None, None, :].repeat(rewards.shape[1], 1), 0)[0]


def margin(reward: float, single: float, opt: float, eps: float = MARGIN_EPS) -> float:
    """Composition margin ``(R - R_single) / (R_opt - R_single)``; NaN when ``R_opt - R_single < eps``."""
    den = opt - single
    return float((reward - single) / den) if np.isfinite(den) and den >= eps else float("nan")
