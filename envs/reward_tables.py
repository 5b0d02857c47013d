"""Rewards given as tables: :class:`Payoff` (any action x token payoff matrix, for the objective
study's rewards) and :class:`OutcomeReward` (the outcome env's +1 / -1 / 0 by outcome token, for
the welfare study). Registered in :data:`envs.rewards.REWARDS`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.outcome import OutcomeTokens
from envs.reward_base import Reward, check_number


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

    NAME = "payoff"
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
        for k, row in enumerate(raw):  # np.array reads true as 1
            for v, entry in enumerate(row):
                check_number(entry, f"reward 'payoff': matrix[{k}][{v}]")
        m = m.astype(np.float64)
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

    NAME = "outcome"
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
