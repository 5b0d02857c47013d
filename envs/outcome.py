"""The outcome process: a base process whose every token is followed by an action and its outcome
(research note 004, reward and punishment concept vectors).

A model trained on this stream sees rewards and punishments *in its own context*, as tokens, so a
"punished" direction in its residual stream can be looked for without any RL signal in the weights.

Given a base HMM with S states and V tokens, the stream repeats three phases:

- phase x, base state s: emits base token x with the base's ``T[x][s, s']``, moves to phase a, s'.
- phase a, base state s (a *decision point*): emits action token ``V + a`` for a in 0..S-1, each with
  probability 1/S, and moves to phase o, (s, a).
- phase o, (s, a): emits the outcome token deterministically and moves to phase x, s. The action is
  rewarded when it names the base state (a == s), punished when it names the next one
  (a == s + 1 mod S), neutral otherwise; S >= 3 so that all three outcomes occur.

Token layout (vocab V + S + 3)::

    0 .. V-1          base tokens
    V .. V+S-1        action tokens (action a is token V + a)
    V+S, V+S+1, V+S+2 REWARDED, PUNISHED, NEUTRAL

State order (2S + S*S states)::

    0 .. S-1          phase x, base state s
    S .. 2S-1         phase a, base state s            (S + s)
    2S .. 2S+S*S-1    phase o, base state s, action a  (2S + s*S + a)

The initial distribution is the base's on the phase-x states, so every sequence starts with a base
token and the belief after it sits on the decision states. Since the action is uniform whatever the
state, an action token carries no information about s: any policy that depends on the history only
leaves the exact filter unchanged, which is why the env (:mod:`envs.outcome_env`) can filter with
these matrices while the agent, not the process, picks the actions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from envs.process import HMM, from_matrices

#: index of each outcome in :func:`outcome_probs`'s last axis and in the outcome token block
REWARDED, PUNISHED, NEUTRAL = 0, 1, 2
OUTCOME_NAMES = ("rewarded", "punished", "neutral")


def outcome_rule(s, a, S: int) -> np.ndarray:
    """Outcome index (:data:`REWARDED` / :data:`PUNISHED` / :data:`NEUTRAL`) of action ``a`` in base
    state ``s`` of an S-state base; broadcasts over ``s`` and ``a``."""
    s, a = np.asarray(s), np.asarray(a)
    return np.where(a == s, REWARDED, np.where(a == (s + 1) % S, PUNISHED, NEUTRAL))


@dataclass(frozen=True)
class OutcomeTokens:
    """Where the phases' tokens and states sit in an outcome process built on an S-state,
    V-token base (see the module docstring); :meth:`of` reads it off an outcome HMM."""

    n_base_states: int
    n_base_tokens: int

    @classmethod
    def of(cls, hmm: HMM) -> OutcomeTokens:
        if hmm.family != "outcome":
            raise ValueError(f"not an outcome process (built by the registry's 'outcome'): {hmm.name!r}")
        S = math.isqrt(hmm.n_states + 1) - 1  # n_states = 2S + S^2 = (S + 1)^2 - 1
        return cls(S, hmm.vocab_size - S - 3)

    @property
    def vocab_size(self) -> int:
        return self.n_base_tokens + self.n_base_states + 3

    @property
    def n_states(self) -> int:
        S = self.n_base_states
        return 2 * S + S * S

    @property
    def base_tokens(self) -> np.ndarray:
        return np.arange(self.n_base_tokens)

    @property
    def action_tokens(self) -> np.ndarray:
        """(S,) token ids of the actions: action a is ``V + a``."""
        return self.n_base_tokens + np.arange(self.n_base_states)

    @property
    def outcome_tokens(self) -> np.ndarray:
        """(3,) token ids of REWARDED, PUNISHED, NEUTRAL."""
        return self.n_base_tokens + self.n_base_states + np.arange(3)

    @property
    def decision_states(self) -> np.ndarray:
        """(S,) the phase-a states, ordered by base state: where the belief sits after a base token."""
        return self.n_base_states + np.arange(self.n_base_states)

    def outcome_state(self, s, a):
        """State id of phase o with base state ``s`` and action ``a`` (broadcasts)."""
        return 2 * self.n_base_states + np.asarray(s) * self.n_base_states + np.asarray(a)

    def outcome_index(self, token) -> np.ndarray:
        """Outcome token id(s) -> 0/1/2 (REWARDED / PUNISHED / NEUTRAL); ValueError for other tokens."""
        k = np.asarray(token) - self.outcome_tokens[0]
        if ((k < 0) | (k > 2)).any():
            raise ValueError(f"not outcome tokens {self.outcome_tokens.tolist()}: {np.asarray(token).tolist()}")
        return k


def outcome_matrices(base: HMM) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(T, init, token_names)`` of the outcome process over ``base`` (layout in the module docstring)."""
    S, V = base.n_states, base.vocab_size
    if S < 3:
        raise ValueError(
            f"outcome: the base process needs at least 3 states (an action naming the state is rewarded, "
            f"one naming the next state punished, any other neutral); {base.name!r} has {S}"
        )
    lay = OutcomeTokens(S, V)
    T = np.zeros((lay.vocab_size, lay.n_states, lay.n_states))  # (V+S+3, N, N)
    T[:V, :S, S : 2 * S] = base.T
    s, a = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")  # (S, S) each
    T[lay.action_tokens[a], lay.decision_states[s], lay.outcome_state(s, a)] = 1.0 / S
    T[lay.outcome_tokens[outcome_rule(s, a, S)], lay.outcome_state(s, a), s] = 1.0
    init = np.zeros(lay.n_states)
    init[:S] = base.init
    names = (*base.token_names, *(f"act{i}" for i in range(S)), *OUTCOME_NAMES)
    return T, init, names


def outcome_hmm(base: HMM) -> HMM:
    """The outcome process over ``base`` as a validated, unregistered HMM (the registry's
    ``envs.processes.outcome`` labels it)."""
    T, init, names = outcome_matrices(base)
    return from_matrices(T, init, name=f"outcome({base.name})", token_names=names)


def decision_belief(hmm: HMM, belief: np.ndarray, atol: float = 1e-9) -> np.ndarray:
    """Belief over the base state at a decision point: (..., n_states) -> (..., S).

    ValueError if the belief puts mass off the decision states, i.e. was not taken right after a
    base token, where a question about "the action now" would be ill-posed.
    """
    lay = OutcomeTokens.of(hmm)
    belief = np.asarray(belief, dtype=np.float64)
    if belief.shape[-1] != lay.n_states:
        raise ValueError(f"belief must have {lay.n_states} entries on its last axis; got shape {belief.shape}")
    on = belief[..., lay.decision_states]  # (..., S)
    if np.abs(on.sum(axis=-1) - 1.0).max(initial=0.0) > atol:
        raise ValueError("belief is not at a decision point (mass off the phase-a states): take it after a base token")
    return on


def outcome_probs(hmm: HMM, belief: np.ndarray) -> np.ndarray:
    """Exact P(outcome | history, action a) from a belief at a decision point.

    ``belief`` (..., n_states) -> (..., S, 3): entry [..., a, k] is the probability that action a
    gets outcome k (:data:`REWARDED`, :data:`PUNISHED`, :data:`NEUTRAL`). The outcome is a function
    of the hidden base state, so this is the base belief summed over the states where a gets k.
    """
    b = decision_belief(hmm, belief)  # (..., S)
    S = b.shape[-1]
    rule = np.eye(3)[outcome_rule(*np.meshgrid(np.arange(S), np.arange(S), indexing="ij"), S)]  # (S_s, S_a, 3)
    return np.einsum("...s,sak->...ak", b, rule)  # (..., S, 3)


__all__ = [
    "NEUTRAL",
    "OUTCOME_NAMES",
    "PUNISHED",
    "REWARDED",
    "OutcomeTokens",
    "decision_belief",
    "outcome_hmm",
    "outcome_matrices",
    "outcome_probs",
    "outcome_rule",
]
