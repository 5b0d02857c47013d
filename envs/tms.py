"""Toy-model-of-superposition data and a one-step Gymnasium env over it (numpy only).

The data of the toy model of superposition (TMS; Elhage et al. 2022, "Toy Models of Superposition";
Chen et al. 2023, "Dynamical versus Bayesian phase transitions in a toy model of superposition"):
x in R^F, each coordinate zero or Uniform[0, 1]. Two sparsity modes:

- ``one_hot`` (the default; Chen et al.'s high-sparsity limit, in which the k-gons are critical
  points and the loss has a closed form): exactly one coordinate, chosen uniformly, is nonzero;
- ``independent`` (Elhage et al.): each coordinate is nonzero independently with probability ``p``.

:func:`moments` gives the exact statistics of either mode (the tests hold samples to them).

**The env** (:class:`TMSEnv`, :class:`TMSVectorEnv`) is a contextual bandit: each episode is one step.
The observation is a fresh x, the action a in R^F (an unbounded Box), the reward

    r = -||a - x||^2

the negative squared reconstruction error: a policy that acts with a = x_hat(x) earns minus the TMS's
supervised loss on x. For a Gaussian policy with mean x_hat(x) and per-coordinate standard deviation
sigma_i the expected reward is exactly ``-E||x_hat(x) - x||^2 - sum_i sigma_i^2``, so the reward
curve of a policy with a fixed sigma is the supervised loss curve shifted by a constant.

How to run::

    env = TMSEnv({"n_features": 6})
    x, _ = env.reset(seed=0)
    _, r, terminated, _, _ = env.step(x)    # r == 0.0, terminated is True

``gymnasium.make_vec("rayexp/TMS-v0", num_envs=256, config=...)`` builds the vector form, which
samples and scores all envs with numpy at once; :func:`make_tms_env` is the creator RLlib calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

TMS_ENV_ID = "rayexp/TMS-v0"
MODES = ("one_hot", "independent")


@dataclass(frozen=True)
class TMSDataConfig:
    """What the data is; :meth:`from_dict` rejects unknown keys and bad values."""

    n_features: int = 6
    """F, the dimension of x (and of the action)."""
    mode: str = "one_hot"
    """``one_hot``: exactly one coordinate is nonzero; ``independent``: each is, with probability ``p``."""
    p: float = 1 / 6
    """P(x_i != 0) in ``independent`` mode (unused in ``one_hot`` mode, where it is 1 / F)."""
    seed: int | None = None
    """Seed of the first reset when ``reset`` is not given one (leave None under RLlib, which seeds resets)."""

    def __post_init__(self):
        n = self.n_features
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 4096:
            raise ValueError(f"n_features must be an int in 1..4096; got {n!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}; got {self.mode!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 < self.p <= 1:
            raise ValueError(f"p must be a number in (0, 1]; got {self.p!r}")

    @classmethod
    def from_dict(cls, config: dict | None) -> TMSDataConfig:
        config = dict(config or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise ValueError(f"unknown TMS env config keys {unknown}; valid: {names}")
        return cls(**config)

    @property
    def p_active(self) -> float:
        """P(x_i != 0) for every coordinate i."""
        return 1 / self.n_features if self.mode == "one_hot" else float(self.p)


def sample(cfg: TMSDataConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, F) float32 draws of x."""
    F = cfg.n_features
    values = rng.random((n, F))
    if cfg.mode == "one_hot":
        x = np.zeros((n, F))
        rows = np.arange(n)
        on = rng.integers(0, F, n)
        x[rows, on] = values[rows, on]
    else:
        x = np.where(rng.random((n, F)) < cfg.p, values, 0.0)
    return x.astype(np.float32)


def moments(cfg: TMSDataConfig) -> dict[str, float]:
    """Exact statistics of one coordinate and of a pair: P(x_i != 0), E x_i, E x_i^2, E x_i x_j (i != j),
    and P(x = 0) (the chance that no coordinate is on)."""
    q, F = cfg.p_active, cfg.n_features
    cross = 0.0 if cfg.mode == "one_hot" else q * q / 4  # independent coordinates: E x_i E x_j
    none = 0.0 if cfg.mode == "one_hot" else (1 - q) ** F
    return {"p_active": q, "mean": q / 2, "second": q / 3, "cross": cross, "p_zero": none}


def _check_actions(actions: np.ndarray, n: int, F: int) -> np.ndarray:
    a = np.asarray(actions, dtype=np.float64).reshape(n, F)
    if not np.isfinite(a).all():
        raise ValueError("TMS env: actions must be finite")
    return a


def _spaces(n_features: int) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """(observation, action) of one env: x in [0, 1]^F, a reconstruction in R^F."""
    obs = gym.spaces.Box(0.0, 1.0, shape=(n_features,), dtype=np.float32)
    return obs, gym.spaces.Box(-np.inf, np.inf, shape=(n_features,), dtype=np.float32)


class TMSEnv(gym.Env):
    """One episode = one step: observe x, act a in R^F, get -||a - x||^2, terminate."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, config: dict | None = None):
        self.config = TMSDataConfig.from_dict(config)
        F = self.config.n_features
        self.observation_space, self.action_space = _spaces(F)
        self._x = np.zeros(F, dtype=np.float32)
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and not self._seeded:
            seed = self.config.seed
        super().reset(seed=seed)
        self._seeded = True
        self._x = sample(self.config, 1, self.np_random)[0]
        return self._x.copy(), {}

    def step(self, action):
        a = _check_actions(action, 1, self.config.n_features)[0]
        reward = -float(np.sum((a - self._x) ** 2))
        return self._x.copy(), reward, True, False, {}


class TMSVectorEnv(VectorEnv):
    """``num_envs`` copies of :class:`TMSEnv` stepped with numpy at once.

    Next-step autoreset (gymnasium's default, what RLlib expects): the step after an episode ends
    resets that env, returns a fresh x with reward 0 and ignores its action. Every episode is one
    step, so the envs alternate between a scored step and a reset step.
    """

    metadata: ClassVar[dict] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, config: dict | None = None):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1; got {num_envs!r}")
        self.config = TMSDataConfig.from_dict(config)
        self.num_envs = int(num_envs)
        F = self.config.n_features
        self.single_observation_space, self.single_action_space = _spaces(F)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._x = np.zeros((self.num_envs, F), dtype=np.float32)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and not self._seeded:
            seed = self.config.seed
        super().reset(seed=seed)
        self._seeded = True
        mask = (options or {}).get("reset_mask")
        rows = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask)
        self._x[rows] = sample(self.config, len(rows), self.np_random)
        self._autoreset[rows] = False
        return self._x.copy(), {}

    def step(self, actions):
        a = _check_actions(actions, self.num_envs, self.config.n_features)
        resetting = self._autoreset.copy()
        rewards = np.where(resetting, 0.0, -np.sum((a - self._x) ** 2, axis=1))
        terminated = ~resetting
        if resetting.any():
            self._x[resetting] = sample(self.config, int(resetting.sum()), self.np_random)
        self._autoreset = terminated.copy()
        return self._x.copy(), rewards, terminated, np.zeros(self.num_envs, dtype=bool), {}


def make_tms_env(config: dict | None = None):
    """Env creator for ``ray.tune.register_env``: the vector env when RLlib passes ``num_envs``
    (its ``vector_entry_point`` mode), else the single env."""
    config = dict(config or {})
    num_envs = config.pop("num_envs", None)
    return TMSEnv(config) if num_envs is None else TMSVectorEnv(num_envs, config)


def expected_reward(loss: float, log_std) -> float:
    """Exact expected reward of the Gaussian policy N(x_hat(x), diag sigma^2) whose mean has supervised
    loss ``loss`` = E||x_hat(x) - x||^2: ``-loss - sum_i sigma_i^2``."""
    sigma2 = np.exp(2 * np.asarray(log_std, dtype=np.float64))
    return -float(loss) - float(np.sum(sigma2)) if math.isfinite(loss) else math.nan


if TMS_ENV_ID not in gym.registry:
    gym.register(id=TMS_ENV_ID, entry_point="envs.tms:TMSEnv", vector_entry_point="envs.tms:TMSVectorEnv")
