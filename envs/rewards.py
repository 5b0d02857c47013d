"""Reward functions for the sequence env: a registry of named, documented entries.

Every reward scores the agent's action at step t, taken after seeing tokens ``x_0..x_t`` of a stream
sampled from the process. A reward is built once per env by :func:`make_reward` (which validates its
params against the process) and then works on whole sampled sequences at once:

- ``lookahead``: how many tokens after ``x_t`` the target may depend on, so the env samples
  ``episode_len + lookahead`` tokens per episode.
- ``targets(tokens (B, L), states (B, L + 1)) -> (B, L - lookahead)`` int64: the target token id for
  the action at each step t (-1 where the step has no target).
- ``rewards(actions (B,), targets (B,)) -> (B,)`` float64, where ``actions`` are token ids.
- ``action_tokens``: the action set (token ids), validated against the vocabulary.

Because the stream never depends on the actions, the targets are fixed when the sequence is sampled;
they are also what ``info["target"]`` reports.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.layout import max_wait
from envs.process import HMM
from envs.processes import noisy_and_states
from envs.reward_base import Reward, check_tokens, is_int
from envs.reward_tables import OutcomeReward, Payoff


class NextToken(Reward):
    """1 if the action is the next emitted token x_{t+1}, else 0.

    The optimal policy is the argmax of P(x_{t+1} | x_0..x_t), i.e. of the exact belief pushed
    through the process; this is the negative control (the pretraining objective as a reward).
    """

    NAME = "next_token"
    ONLINE = True

    def targets(self, tokens, states):
        return tokens[:, 1:].astype(np.int64)  # (B, L-1)


class RareNextToken(Reward):
    """Next-token correctness, paid ``rare`` when the next token belongs to factor ``factor`` of the
    composition and ``common`` otherwise (0 when wrong).

    Meant for gated processes, whose second factor appears only after the trigger token: with
    ``common=0`` only the rare capability pays (see :class:`envs.gym_env.ActiveGatedEnv`).
    """

    NAME = "rare_next_token"
    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {
        "factor": (1, "index of the rare factor in the composition"),
        "rare": (1.0, "reward for a correct prediction of a token of that factor"),
        "common": (0.0, "reward for a correct prediction of any other token"),
    }
    ONLINE = True

    def _setup(self):
        layout = self.hmm.layout
        if layout is None or not layout.disjoint:
            raise ValueError(
                f"reward 'rare_next_token' needs a composed process whose factors own disjoint tokens "
                f"(interleave, mixture, gated); got {self.hmm.name!r}"
            )
        f = self.params["factor"]
        if not is_int(f) or not 0 <= f < layout.n_factors:
            raise ValueError(f"reward 'rare_next_token': factor must be an index < {layout.n_factors}; got {f!r}")
        self._rare = layout.token_owner == f  # (V,)
        self._values = np.array([self.params["common"], self.params["rare"]])  # floats: Reward checked them

    def targets(self, tokens, states):
        return tokens[:, 1:].astype(np.int64)

    def rewards(self, actions, targets):
        hit = actions == targets
        return np.where(hit, self._values[self._rare[np.maximum(targets, 0)].astype(np.int64)], 0.0)


class RewardPunish(Reward):
    """+1 if the action is one of ``rewarded``, -1 if one of ``punished``, 0 for any other action.

    For the concept-vector study: it depends on the action only, so rewarded and punished
    trajectories are easy to tell apart and to collect from the same stream.
    """

    NAME = "reward_punish"
    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {
        "rewarded": ((), "token ids that earn +1 when chosen"),
        "punished": ((), "token ids that earn -1 when chosen"),
    }
    ONLINE = True

    def _setup(self):
        V = self.hmm.vocab_size
        good = check_tokens(self.params["rewarded"], V, "reward 'reward_punish': rewarded", allow_empty=True)
        bad = check_tokens(self.params["punished"], V, "reward 'reward_punish': punished", allow_empty=True)
        if not len(good) and not len(bad):
            raise ValueError("reward 'reward_punish': give at least one token in rewarded or punished")
        both = sorted(set(good.tolist()) & set(bad.tolist()))
        if both:
            raise ValueError(f"reward 'reward_punish': tokens {both} are both rewarded and punished")
        self._value = np.zeros(V)
        self._value[good] = 1.0
        self._value[bad] = -1.0

    def targets(self, tokens, states):
        return np.full((tokens.shape[0], tokens.shape[1] - 1), -1, dtype=np.int64)

    def rewards(self, actions, targets):
        return self._value[actions]


class JointTarget(Reward):
    """1 if the action is the token for ``(a + b) mod m``, else 0, where ``a`` (``b``) is the local id
    of the first token of factor A (B) emitted after x_t.

    Needs a stream in which both factors keep emitting (``product`` or ``interleave``): the lookahead
    is the longest possible wait for a token of either factor, computed from the process and refused
    if unbounded (mixture, gated). Since the factors are independent,
    P(target = k) = sum_{a + b = k mod m} P_A(a) P_B(b), so the optimal policy needs both factor
    beliefs at once (the joint belief is their outer product); any policy reading one factor only is
    worse whenever the other factor's next token is not uniform. The action set has ``m`` tokens:
    action token ``action_tokens[k]`` claims target k (default: factor A's tokens with local ids
    0..m-1 when the factors own disjoint tokens, else token ids 0..m-1).
    """

    NAME = "joint_target"
    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {
        "factors": ((0, 1), "indices (A, B) of the two factors in the composition"),
        "m": (None, "modulus; default: A's vocabulary size"),
    }

    def _setup(self):
        hmm = self.hmm
        if len(hmm.factors) < 2:
            raise ValueError(
                f"reward 'joint_target' needs a composition of at least two factors (product or interleave); "
                f"{hmm.name!r} has {len(hmm.factors)}"
            )
        pair, n = self.params["factors"], len(hmm.factors)
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_int(f) for f in pair)
        fa, fb = pair if ok else (-1, -1)
        if not (0 <= fa < n and 0 <= fb < n and fa != fb):
            raise ValueError(f"reward 'joint_target': factors must be two distinct indices < {n}; got {pair!r}")
        self._fa, self._fb = int(fa), int(fb)
        m = self.params["m"]
        m = hmm.factors[fa].vocab_size if m is None else m
        if not is_int(m) or m < 2:
            raise ValueError(f"reward 'joint_target': m must be an int >= 2; got {m!r}")
        self._m = int(m)
        waits = [max_wait(hmm, f) for f in (fa, fb)]
        if None in waits:
            raise ValueError(
                f"reward 'joint_target': in {hmm.name!r} a factor can stay silent for arbitrarily long "
                "(mixture or gated?), so its next token is not always defined; use product or interleave"
            )
        self.lookahead = max(waits)

    def default_action_tokens(self):
        layout = self.hmm.layout
        pool = layout.factor_tokens[self._fa] if layout.disjoint else list(range(self.hmm.vocab_size))
        if self._m > len(pool):
            raise ValueError(
                f"reward 'joint_target': m={self._m} targets but only {len(pool)} default action tokens; "
                "pass action_tokens (m token ids)"
            )
        return pool[: self._m]

    def _check_actions(self):
        if len(self.action_tokens) != self._m:
            raise ValueError(
                f"reward 'joint_target': needs exactly m={self._m} action tokens (one per target); "
                f"got {len(self.action_tokens)}"
            )
        if len(set(self.action_tokens.tolist())) != self._m:
            raise ValueError("reward 'joint_target': action tokens must be distinct")

    def targets(self, tokens, states):
        n = tokens.shape[1] - self.lookahead
        split = self.hmm.layout.split_tokens(tokens)
        nxt = [_next_local(split[f])[:, 1 : n + 1] for f in (self._fa, self._fb)]  # (B, n) each
        assert (nxt[0] >= 0).all() and (nxt[1] >= 0).all(), "lookahead too short for joint_target"
        return self.action_tokens[(nxt[0] + nxt[1]) % self._m]  # (B, n)

    def target_probs(self, factor_beliefs: list[np.ndarray]) -> np.ndarray:
        """P(target = k | factor beliefs) (..., m): the oracle's prediction from the joint belief."""
        pa = self.hmm.factors[self._fa].next_token_probs(factor_beliefs[self._fa])  # (..., Va)
        pb = self.hmm.factors[self._fb].next_token_probs(factor_beliefs[self._fb])  # (..., Vb)
        k = (np.arange(pa.shape[-1])[:, None] + np.arange(pb.shape[-1])[None, :]).ravel() % self._m  # (Va*Vb,)
        joint = (pa[..., :, None] * pb[..., None, :]).reshape(pa.shape[:-1] + (k.size,))  # (..., Va*Vb)
        return joint @ np.eye(self._m)[k]  # (..., m)


class Implies(Reward):
    """1 if the action is the token for IMPLIES(x, y) = NOT(x AND NOT y) of a noisy AND gate's two
    input bits x, y; 0 otherwise.

    Default (``every_step=False``): only the steps right before the gate emits its output bit have a
    target, and x, y are the two bits just emitted by the gate; every other step has no target and
    pays 0 whatever the action. A policy can then score by answering IMPLIES of the gate's last two
    bits at every step, without tracking the gate's phase. With ``every_step=True`` every step has a
    target: IMPLIES of the gate's latest complete input pair (the last y emitted so far and the x
    before it), so the answer depends on where in its triple the gate is, which under noise is a
    belief over the gate's hidden phase.

    Works on ``noisy_and`` itself and on a mixture / interleave / product / gated composition with a
    noisy AND factor (``gate`` picks which; other factors, e.g. noisy NOT, never set a target). A gate
    is what the registry built as ``noisy_and`` (``hmm.family``): a ``from_matrices`` copy of its
    matrices is not one, since nothing then says which of its states emit which bit.
    Steps whose input bits were emitted before the episode started have no target. The action set
    is two tokens: ``action_tokens[b]`` claims IMPLIES = b (default: the gate's own tokens for 0, 1).
    """

    NAME = "implies"
    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {
        "gate": (None, "index of the noisy AND factor in the composition (default: the first one)"),
        "every_step": (False, "target at every step (latest input pair) instead of only before the output bit"),
    }

    def _setup(self):
        hmm = self.hmm
        parts = [hmm] if hmm.layout is None else list(hmm.factors)
        # recognised by what the registry built, not by its matrices (see envs.processes)
        gates = [i for i, f in enumerate(parts) if f.family == "noisy_and"]
        if not gates:
            raise ValueError(
                f"reward 'implies' needs noisy_and or a composition with a noisy_and factor; got {hmm.name!r}"
            )
        gate = self.params["gate"]
        if gate is not None and (not is_int(gate) or gate not in gates):
            raise ValueError(
                f"reward 'implies': gate must be the index of a noisy_and factor, one of {gates}; got {gate!r}"
            )
        self._gate = gates[0] if gate is None else int(gate)
        if self.params["every_step"] is not True and self.params["every_step"] is not False:
            raise ValueError(f"reward 'implies': every_step must be true or false; got {self.params['every_step']!r}")

    @property
    def gate(self) -> int:
        """Index of the scored noisy AND gate among the composition's factors (0 for a plain gate)."""
        return self._gate

    def default_action_tokens(self):
        layout = self.hmm.layout
        if layout is None:
            return [0, 1]
        if not layout.disjoint:
            raise ValueError("reward 'implies' on a product: pass action_tokens (the tokens for 0 and 1)")
        return [layout.global_token(self._gate, bit) for bit in (0, 1)]

    def _check_actions(self):
        if len(self.action_tokens) != 2 or self.action_tokens[0] == self.action_tokens[1]:
            raise ValueError(f"reward 'implies': needs two distinct action tokens (for 0, 1); got {self.action_tokens}")

    def targets(self, tokens, states):
        L = tokens.shape[1]
        layout = self.hmm.layout
        if layout is not None:
            bits = layout.split_tokens(tokens)[self._gate]  # (B, L) gate-local bits, -1 where silent
            st = layout.factor_states(states)[self._gate]  # (B, L+1) gate state before each token
        else:
            bits, st = tokens, states
        if self.params["every_step"]:
            is_y = (bits >= 0) & np.isin(st[:, :L], noisy_and_states("y"))  # (B, L)
            y_pos = np.maximum.accumulate(np.where(is_y, np.arange(L), -1), axis=1)[:, : L - 1]  # (B, n)
            ok = y_pos >= 0
        else:
            y_pos = _last_before(bits)[:, 1:L]  # (B, n): the gate's last bit up to step t
            ok = (bits[:, 1:] >= 0) & np.isin(st[:, 1:L], noisy_and_states("out"))  # the output bit is x_{t+1}
        x_pos = _last_before(bits, np.maximum(y_pos, 0))  # (B, n): the gate's bit before y
        ok &= (y_pos >= 0) & (x_pos >= 0)
        x = np.take_along_axis(bits, np.maximum(x_pos, 0), axis=1)
        y = np.take_along_axis(bits, np.maximum(y_pos, 0), axis=1)
        implies = np.where(ok, (1 - x) | y, 0)  # (B, n)
        return np.where(ok, self.action_tokens[implies], -1)


REWARDS: dict[str, type[Reward]] = {
    cls.NAME: cls for cls in (NextToken, JointTarget, Implies, RewardPunish, RareNextToken, Payoff, OutcomeReward)
}


def make_reward(name: str, hmm: HMM, params: dict | None = None, action_tokens=None) -> Reward:
    """The validated reward ``name`` for process ``hmm``; ValueError on an unknown name or bad params."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {sorted(REWARDS)}")
    return REWARDS[name](hmm, params, action_tokens)


def _last_before(local: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
    """(B, L) factor-local tokens -> (B, L+1): entry s is the last position p < s (p < before[:, s]
    if given) where the factor emitted, -1 if none."""
    B, L = local.shape
    idx = np.where(local >= 0, np.arange(L), -1)  # (B, L)
    last = np.concatenate([np.full((B, 1), -1), np.maximum.accumulate(idx, axis=1)], axis=1)  # (B, L+1)
    if before is None:
        return last
    return np.where(before > 0, np.take_along_axis(last, np.maximum(before, 0), axis=1), -1)


def _next_local(local: np.ndarray) -> np.ndarray:
    """(B, L) factor-local tokens (-1: silent) -> (B, L): the factor's first token at or after each position."""
    B, L = local.shape
    idx = np.where(local >= 0, np.arange(L), L)  # (B, L)
    first = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]  # (B, L)
    padded = np.concatenate([local, np.full((B, 1), -1)], axis=1)  # (B, L+1)
    return np.take_along_axis(padded, first, axis=1)
