"""The base of every reward (:class:`Reward`) and the token-list check they share.

Split from :mod:`envs.rewards` (the registry and the sequence rewards) so reward families can live
in their own modules (:mod:`envs.reward_tables`) without an import cycle.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.process import HMM


class Reward:
    """Base class. ``PARAMS`` maps each parameter name to (default, description)."""

    #: the name the registry knows it by (``envs.rewards.REWARDS`` is built from these)
    NAME: ClassVar[str] = ""
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
        for key, (default, _) in self.PARAMS.items():
            if isinstance(default, float):  # a reward amount
                self.params[key] = check_number(self.params[key], f"reward {self.name!r}: {key}")
        self.lookahead = 1
        self._setup()
        tokens = self.default_action_tokens() if action_tokens is None else action_tokens
        self.action_tokens = check_tokens(tokens, hmm.vocab_size, f"reward {self.name!r}: action_tokens")
        self._check_actions()

    @property
    def name(self) -> str:
        """The name the registry (``envs.rewards.REWARDS``) knows this reward by."""
        return type(self).NAME

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


#: the largest reward magnitude a parameter may set: PPO's value loss squares returns in float32
#: (max ~3e38), and no task here needs rewards past order 1
MAX_REWARD = 1e6


def is_int(value) -> bool:
    """An integer and not a bool: YAML's ``true`` would otherwise pass as index 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_number(value, what: str) -> float:
    """``value`` as a float: a real number (``true`` is none), finite, at most MAX_REWARD in size."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number; got {value!r}")  # noqa: TRY004  (bad input, one message)
    if not abs(value) <= MAX_REWARD:  # before float(): a 400-digit int overflows it
        raise ValueError(f"{what} must be finite and at most {MAX_REWARD:g} in size; got {value!r}")
    return float(value)


def check_tokens(tokens, vocab_size: int, what: str, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be a list of integer token ids; got {tokens!r}")
    if not arr.size and not allow_empty:
        raise ValueError(f"{what} is empty")
    bad = sorted({int(x) for x in arr if not 0 <= x < vocab_size})
    if bad:
        raise ValueError(f"{what}: tokens {bad} are not in the vocabulary 0..{vocab_size - 1}")
    return arr.astype(np.int64)
