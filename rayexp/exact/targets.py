"""Exact target distributions of a reward: P(target = k | context), and what one factor alone predicts.

The composition signals score policies against the *exact* distribution of what the reward wants
(docs/design.md §6 rule 7), computed from exact beliefs, not from sampled rewards. Supported rewards:

- ``next_token``: P(x_{t+1} = action_tokens[k] | x_0..x_t) = ``hmm.next_token_probs(belief)`` at the
  action tokens (rows sum to less than 1 when the action set leaves tokens out);
- ``joint_target``: ``reward.target_probs(factor_beliefs)`` = P((a + b) mod m = k);
- ``implies`` (default: a target only where the noisy AND gate's next bit is its output): the target
  is IMPLIES of the gate's last two bits, known from the tokens, and it exists with the belief's mass
  on joint states where the gate is in an output state and emits the next token, so P(target = k) =
  P(output next) * [k = IMPLIES(x, y)] (0 elsewhere).

Every other reward raises :class:`UnsupportedReward` saying so: its expected reward is not a
P(target) dot product (``reward_punish``, ``rare_next_token``, ``implies`` with ``every_step``).

The best single-factor observer for factor i sees factor i's tokens only (and the position, hence
the phase of an interleave). Because the factors are independent and both rewards' P is linear in
each factor's belief, the best such observer's expected P is P evaluated with every other factor's
belief replaced by that factor's prior (its ``init``, stationary for every factor used here), and
its best policy is the greedy choice on that P: no single-factor policy scores more.
"""

from __future__ import annotations

import numpy as np

from envs.process import HMM
from envs.processes import noisy_and_states
from envs.rewards import Implies, JointTarget, NextToken, Reward

SUPPORTED_REWARDS = ("next_token", "joint_target", "implies")


class UnsupportedReward(ValueError):
    """The composition signals have no exact target distribution for this reward."""


def check_supported(reward: Reward) -> None:
    implies_ok = isinstance(reward, Implies) and not reward.params["every_step"]
    if type(reward) not in (NextToken, JointTarget) and not implies_ok:
        raise UnsupportedReward(
            f"composition signals support the rewards {list(SUPPORTED_REWARDS)} (an exact P(target | context) "
            f"from beliefs); reward {reward.name!r} is unsupported"
        )


def target_probs(hmm: HMM, reward: Reward, beliefs: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
    """Joint beliefs (..., S) -> P(target = action k | context) (..., A), exact. ``implies`` also
    needs the tokens (N, L) the beliefs (N, L, S) follow."""
    check_supported(reward)
    beliefs = np.asarray(beliefs, dtype=np.float64)
    if isinstance(reward, Implies):
        if tokens is None:
            raise ValueError("target_probs for 'implies' needs the tokens")
        return implies_probs(hmm, reward, np.asarray(tokens), beliefs)
    if isinstance(reward, JointTarget):
        return reward.target_probs(hmm.factor_beliefs(beliefs))  # (..., m)
    return hmm.next_token_probs(beliefs)[..., reward.action_tokens]  # (..., A)


def joint_from_factors(hmm: HMM, beliefs: np.ndarray, factor_beliefs: list[np.ndarray]) -> np.ndarray:
    """The joint belief (..., S) whose factor marginals are ``factor_beliefs`` and whose phase marginal
    (interleave, gated) is that of ``beliefs``: exact for product / interleave / gated, whose joint
    belief is the outer product of its factors' (times the phase), see :mod:`envs.layout`."""
    layout = hmm.layout
    beliefs = np.asarray(beliefs, dtype=np.float64)
    lead = beliefs.shape[:-1]
    joint = np.ones(lead + (1,))  # (..., 1)
    if layout.phase_axes:
        full = beliefs.reshape(lead + layout.state_shape)  # (..., n_phase, S_A, S_B, ...)
        joint = full.sum(axis=tuple(range(len(lead) + layout.phase_axes, full.ndim))).reshape(lead + (-1,))
    for fb in factor_beliefs:  # row-major order of state_shape: phase first, then the factors in order
        fb = np.broadcast_to(fb, lead + fb.shape[-1:])
        joint = (joint[..., :, None] * fb[..., None, :]).reshape(lead + (-1,))  # (..., P * S_i)
    return joint.reshape(lead + (layout.n_states,))


def single_factor_probs(hmm: HMM, reward: Reward, beliefs: np.ndarray, factor: int) -> np.ndarray:
    """P(target = k) as predicted by an observer of factor ``factor`` alone (..., A): every other
    factor's belief replaced by its prior. ValueError for a primitive process or a mixture."""
    check_supported(reward)
    layout = hmm.layout
    if layout is None or layout.exclusive:
        raise ValueError(
            f"single-factor ceilings need a composition whose factors all run (product, interleave, gated); "
            f"got {hmm.name!r}"
        )
    beliefs = np.asarray(beliefs, dtype=np.float64)
    fb = layout.factor_beliefs(beliefs)
    kept = [b if i == factor else np.broadcast_to(f.init, b.shape) for i, (b, f) in enumerate(zip(fb, hmm.factors))]
    return target_probs(hmm, reward, joint_from_factors(hmm, beliefs, kept))


def implies_probs(hmm: HMM, reward: Implies, tokens: np.ndarray, beliefs: np.ndarray) -> np.ndarray:
    """(N, L, 2) P(target = k) of ``implies`` after each prefix of ``tokens`` (N, L)."""
    layout, gate = hmm.layout, reward.gate
    S = hmm.n_states
    gate_state = np.arange(S) if layout is None else layout.factor_states(np.arange(S))[gate]  # (S,)
    # a target exists only where the gate both sits in an output state and is the one to emit next:
    # on an interleave or a gated process another factor may speak while the gate waits in its output state
    owned = np.ones(hmm.vocab_size, dtype=bool) if layout is None else layout.owns(gate)  # (V,)
    gate_speaks = hmm.T[owned].sum(axis=(0, 2))  # (S,) P(the next token is the gate's | joint state)
    is_out = np.isin(gate_state, noisy_and_states("out"))
    p_out = beliefs @ (is_out * gate_speaks)  # (N, L)
    bits = tokens if layout is None else layout.split_tokens(tokens)[gate]  # (N, L) gate bits, -1 silent
    N, L = bits.shape
    pos = np.where(bits >= 0, np.arange(L), -1)  # (N, L)
    y_pos = np.maximum.accumulate(pos, axis=1)  # (N, L) the gate's last bit up to t
    before = np.concatenate([np.full((N, 1), -1), y_pos[:, :-1]], axis=1)  # last gate bit before position p
    x_pos = np.where(y_pos > 0, np.take_along_axis(before, np.maximum(y_pos, 0), axis=1), -1)  # (N, L)
    ok = (y_pos >= 0) & (x_pos >= 0)
    x = np.take_along_axis(bits, np.maximum(x_pos, 0), axis=1)
    y = np.take_along_axis(bits, np.maximum(y_pos, 0), axis=1)
    value = np.where(ok, (1 - x) | y, 0)  # (N, L) IMPLIES(x, y) = action index; x is -1 (silent) where not ok
    P = np.zeros((N, L, 2))
    np.put_along_axis(P, value[..., None], np.where(ok, p_out, 0.0)[..., None], axis=-1)
    return P
