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
from envs.outcome import OutcomeTokens
from envs.process import HMM
from envs.processes import noisy_and_states


class Reward:
    """Base class. ``PARAMS`` maps each parameter name to (default, description)."""

    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {}
    #: rewards whose target at step t is read from the pair (x_t, x_{t+1}) alone (the next token, or the
    #: current one) can also score a stream the agent steers (:class:`envs.active_env.ActiveGatedEnv`
    #: calls ``targets`` on that pair)
    ONLINE: ClassVar[bool] = False
    #: the one env kind (``envs.env_config.ENV_KINDS``) that can score this reward; None: any that passes its checks
    ENV: ClassVar[str | None] = None

    def __init__(self, hmm: HMM, params: dict | None = None, action_tokens=None):
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            valid = {k: d for k, (d, _) in self.PARAMS.items()}
            raise ValueError(f"reward {self.name!r}: unknown params {unknown}; valid params (defaults): {valid}")
        self.hmm = hmm
        self.params = {k: params.get(k, d) for k, (d, _) in self.PARAMS.items()}
        self.lookahead = 1
        self._setup()
        tokens = self.default_action_tokens() if action_tokens is None else action_tokens
        self.action_tokens = _check_tokens(tokens, hmm.vocab_size, f"reward {self.name!r}: action_tokens")
        self._check_actions()

    @property
    def name(self) -> str:
        return next((k for k, v in REWARDS.items() if v is type(self)), type(self).__name__)

    def _setup(self) -> None:
        """Validate params against the process; set ``lookahead``."""

    def _check_actions(self) -> None:
        """Validate ``action_tokens`` against the reward (after the generic vocabulary check)."""

    def default_action_tokens(self) -> list[int]:
        return list(range(self.hmm.vocab_size))

    def targets(self, tokens: np.ndarray, states: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rewards(self, actions: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return (actions == targets).astype(np.float64)


class NextToken(Reward):
    """1 if the action is the next emitted token x_{t+1}, else 0.

    The optimal policy is the argmax of P(x_{t+1} | x_0..x_t), i.e. of the exact belief pushed
    through the process; this is the negative control (the pretraining objective as a reward).
    """

    ONLINE = True

    def targets(self, tokens, states):
        return tokens[:, 1:].astype(np.int64)  # (B, L-1)


class RareNextToken(Reward):
    """Next-token correctness, paid ``rare`` when the next token belongs to factor ``factor`` of the
    composition and ``common`` otherwise (0 when wrong).

    Meant for gated processes, whose second factor appears only after the trigger token: with
    ``common=0`` only the rare capability pays (see :class:`envs.gym_env.ActiveGatedEnv`).
    """

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
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 0 <= f < layout.n_factors:
            raise ValueError(f"reward 'rare_next_token': factor must be an index < {layout.n_factors}; got {f!r}")
        self._rare = layout.token_owner == f  # (V,)
        self._values = np.array([float(self.params["common"]), float(self.params["rare"])])

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

    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {
        "rewarded": ((), "token ids that earn +1 when chosen"),
        "punished": ((), "token ids that earn -1 when chosen"),
    }
    ONLINE = True

    def _setup(self):
        V = self.hmm.vocab_size
        good = _check_tokens(self.params["rewarded"], V, "reward 'reward_punish': rewarded", allow_empty=True)
        bad = _check_tokens(self.params["punished"], V, "reward 'reward_punish': punished", allow_empty=True)
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
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(f, (int, np.integer)) for f in pair)
        fa, fb = pair if ok else (-1, -1)
        if not (0 <= fa < n and 0 <= fb < n and fa != fb):
            raise ValueError(f"reward 'joint_target': factors must be two distinct indices < {n}; got {pair!r}")
        self._fa, self._fb = int(fa), int(fb)
        m = self.params["m"]
        m = hmm.factors[fa].vocab_size if m is None else m
        if not isinstance(m, (int, np.integer)) or m < 2:
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
        if gate is not None and gate not in gates:
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


class Payoff(Reward):
    """A payoff table: ``matrix[k][v]`` is paid for action ``action_tokens[k]`` when the scored token
    is ``v``; the scored token is the next token x_{t+1} (``offset=1``, the default) or the current
    token x_t, the last one the agent saw (``offset=0``: an "echo" reward).

    ``matrix`` has one row per action token (``len(action_tokens)``, by default all V tokens) and
    one column per vocabulary token, finite numbers. Examples with V = 3, all tokens as actions:

    - ``next_token``: the identity, offset 1 (same rewards on every stream);
    - ``-next_token``: minus the identity, offset 1 (the negated objective);
    - shifted prediction, paid for claiming ``(x_{t+1} + 1) mod V``: the permutation matrix with
      ``matrix[(v + 1) % V][v] = 1``, offset 1;
    - echo, paid for repeating the token just seen: the identity, offset 0;
    - a constant preference for token 0, whatever the stream does: row 0 all ones, the rest zeros
      (either offset; ``reward_punish`` with ``rewarded=[0]`` pays the same).

    Both offsets have ``lookahead = 1`` and score the steps t = 0..L-2 of a stream of L tokens:
    offset 1 needs x_{t+1}; offset 0 does not, but keeping the same lookahead means the env samples
    the same number of tokens per episode as ``next_token``, so under one seed every payoff sees the
    same stream (and the env's final observation and belief, at t = episode_len, exist). Targets are
    ``tokens[:, 1:]`` (offset 1) or ``tokens[:, :-1]`` (offset 0); ``info["target"]`` is that token.
    ``ONLINE`` holds for both offsets: the target is x_{t+1} or x_t, both read from the pair
    (x_t, x_{t+1}) that a steered stream scores (x_t is even fixed before the action).
    """

    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {
        "matrix": (None, "A lists of V numbers: matrix[k][v] is paid for action k when the scored token is v"),
        "offset": (1, "which token is scored: 1 = the next token x_{t+1}, 0 = the current token x_t (echo)"),
    }
    ONLINE = True

    def _setup(self):
        offset = self.params["offset"]
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset not in (0, 1):
            raise ValueError(
                f"reward 'payoff': offset must be 1 (score the next token) or 0 (score the current token); got {offset!r}"
            )
        self._offset = int(offset)
        raw = self.params["matrix"]
        if raw is None:
            raise ValueError("reward 'payoff': give matrix (one row of V numbers per action token)")
        try:
            m = np.array(raw)
        except ValueError:  # ragged rows
            m = None
        V = self.hmm.vocab_size
        if m is None or m.ndim != 2 or m.dtype == bool or not np.issubdtype(m.dtype, np.number):
            raise ValueError(
                f"reward 'payoff': matrix must be a list of rows of V={V} numbers (one row per action token); got {raw!r}"
            )
        if m.shape[1] != V:
            raise ValueError(f"reward 'payoff': matrix must have V={V} columns (one per token); got shape {m.shape}")
        m = m.astype(np.float64)
        if not np.isfinite(m).all():
            k, v = np.argwhere(~np.isfinite(m))[0]
            raise ValueError(f"reward 'payoff': matrix entries must be finite; matrix[{k}][{v}] is {m[k, v]}")
        m.setflags(write=False)
        self._matrix = m
        self.lookahead = 1

    def _check_actions(self):
        A = len(self.action_tokens)
        if self._matrix.shape[0] != A:
            raise ValueError(
                f"reward 'payoff': matrix must have one row per action token, shape ({A}, {self.hmm.vocab_size}); "
                f"got shape {self._matrix.shape}"
            )
        if len(set(self.action_tokens.tolist())) != A:
            raise ValueError(f"reward 'payoff': action tokens must be distinct; got {self.action_tokens.tolist()}")
        self._index = np.full(self.hmm.vocab_size, -1, dtype=np.int64)  # token id -> action index
        self._index[self.action_tokens] = np.arange(A)

    @property
    def matrix(self) -> np.ndarray:
        """(A, V) float64, read-only: row k is what action ``action_tokens[k]`` earns for each scored token."""
        return self._matrix

    @property
    def offset(self) -> int:
        """1: the scored token is x_{t+1}; 0: it is x_t."""
        return self._offset

    def targets(self, tokens, states):
        tokens = np.asarray(tokens)
        return (tokens[:, 1:] if self._offset == 1 else tokens[:, :-1]).astype(np.int64)  # (B, L-1)

    def rewards(self, actions, targets):
        actions, targets = np.asarray(actions, dtype=np.int64), np.asarray(targets, dtype=np.int64)
        if actions.size and (actions.min() < 0 or actions.max() >= self.hmm.vocab_size):
            raise ValueError(f"reward 'payoff': action tokens must lie in 0..{self.hmm.vocab_size - 1}")
        k = self._index[actions]
        if (k < 0).any():
            raise ValueError(
                f"reward 'payoff': actions {sorted(set(actions[k < 0].tolist()))} are not in the action set "
                f"{self.action_tokens.tolist()}"
            )
        ok = targets >= 0  # -1: no target, pays 0 (never produced by payoff's own targets)
        return np.where(ok, self._matrix[k, np.maximum(targets, 0)], 0.0)


class OutcomeReward(Reward):
    """The outcome process's own outcome as the reward: ``rewarded`` (default +1) when the action
    names the hidden base state, ``punished`` (default -1) when it names the next one, ``neutral``
    (default 0) otherwise (rule and tokens in :mod:`envs.outcome`).

    The outcome follows from the agent's action, so only ``env: outcome``
    (:class:`envs.outcome_env.OutcomeEnv`) can score it: it passes the outcome token it emitted as
    the target, and :meth:`rewards` maps that token to its value whatever the action. The action
    set is the process's S action tokens, in order (action i is action token V + i).
    """

    PARAMS: ClassVar[dict[str, tuple[object, str]]] = {
        "rewarded": (1.0, "reward when the action names the hidden base state"),
        "punished": (-1.0, "reward when the action names the next base state"),
        "neutral": (0.0, "reward for any other action"),
    }
    ONLINE = True
    ENV = "outcome"

    def _setup(self):
        if self.hmm.family != "outcome":
            raise ValueError(f"reward 'outcome' needs an outcome process (name: outcome); got {self.hmm.name!r}")
        self._tokens = OutcomeTokens.of(self.hmm)
        for k in ("rewarded", "punished", "neutral"):
            v = self.params[k]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise ValueError(f"reward 'outcome': {k} must be a finite number; got {v!r}")
        self._values = np.array([self.params[k] for k in ("rewarded", "punished", "neutral")], dtype=np.float64)

    def default_action_tokens(self):
        return self._tokens.action_tokens.tolist()

    def _check_actions(self):
        want = self._tokens.action_tokens
        if not np.array_equal(self.action_tokens, want):
            raise ValueError(
                f"reward 'outcome': action_tokens must be the process's action tokens {want.tolist()} in order "
                f"(action i is action token {want[0]} + i); got {self.action_tokens.tolist()}"
            )

    def targets(self, tokens, states):
        raise ValueError("reward 'outcome' needs env: outcome (the outcome depends on the agent's action)")

    def rewards(self, actions, targets):
        """``targets``: the outcome token ids the env emitted, one per action."""
        return self._values[self._tokens.outcome_index(targets)]


REWARDS: dict[str, type[Reward]] = {
    "next_token": NextToken,
    "joint_target": JointTarget,
    "implies": Implies,
    "reward_punish": RewardPunish,
    "rare_next_token": RareNextToken,
    "payoff": Payoff,
    "outcome": OutcomeReward,
}


def make_reward(name: str, hmm: HMM, params: dict | None = None, action_tokens=None) -> Reward:
    """The validated reward ``name`` for process ``hmm``; ValueError on an unknown name or bad params."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {sorted(REWARDS)}")
    return REWARDS[name](hmm, params, action_tokens)


def _check_tokens(tokens, vocab_size: int, what: str, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be a list of integer token ids; got {tokens!r}")
    if not arr.size and not allow_empty:
        raise ValueError(f"{what} is empty")
    bad = sorted({int(x) for x in arr if not 0 <= x < vocab_size})
    if bad:
        raise ValueError(f"{what}: tokens {bad} are not in the vocabulary 0..{vocab_size - 1}")
    return arr.astype(np.int64)


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
